"""Latency of a surgery result vs the BN-folded input, on one or all backends.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/latency.py
    .venv/bin/python benchmarks/latency.py --backends jax,tensorflow,torch
    .venv/bin/python benchmarks/latency.py --backends jax,torch --threads 1

For each case, `surgery(model, merge=False, cut_dead_channels=False)` is the
baseline (BatchNorm folded, locked activations removed, nothing merged) and
`surgery(model)` the result. They are timed by
`keras_collapse.report.measure_latency`, interleaved in one process, with a
second copy of the baseline: the latency of a model is the median over
repeats of the faster of `model(x)` and `predict_on_batch(x)`. Printed:
ratio = baseline time / result time (above 1: the result is faster), and
noise = baseline time / copy time, which would be 1.00 on a quiet machine.
A surgery result must never be slower than its BN-folded input; a ratio
below `--slower-than` is flagged.
"""

import argparse
import math
import sys
import time

from common import add_run_options
from common import dispatch
from common import header_lines
from common import save
from common import table
from common import wrap
from common import write_json

CASES = {
    "a": "MobileNetV2-style, all 10 blocks linear",
    "b": "MobileNetV2-style, 6 residual blocks linear",
    "c": "ResNet-20-style, inner ReLUs linear",
    "d": "MLP, 4 blocks 256-1024-256, inner act linear",
}
BATCH_SIZES = (1, 64)


def build(case):
    import models

    if case == "a":
        return models.mobilenet_v2_style(lock="all")
    if case == "b":
        return models.mobilenet_v2_style(lock="residual")
    if case == "c":
        return models.resnet20_style()
    return models.mlp_blocks()


def measure(case, max_repeats, budget):
    """Builds one case, runs both surgeries and times them. Returns a row.

    Two BN-folded copies are timed with the result: the ratio between the
    two copies (same graph, same weights) is the noise of the measurement.
    """
    from keras_collapse.report import measure_latency
    from keras_collapse.surgery import surgery

    model = build(case)
    began = time.perf_counter()
    result, report = surgery(model, return_report=True)
    surgery_seconds = time.perf_counter() - began
    timed = {
        "bn_folded": surgery(model, merge=False, cut_dead_channels=False),
        "bn_folded_copy": surgery(model, merge=False, cut_dead_channels=False),
        "surgery": result,
    }
    row = {
        "case": case,
        "before": report.before.as_dict(),
        "after": report.after.as_dict(),
        "merges": report.count("merge"),
        "residuals": report.count("absorb_residual"),
        "skipped": [(e.kind, e.detail, ", ".join(e.layers)) for e in report.skipped],
        "deviation": report.deviation,
        "same_graph": _layers(result) == _layers(timed["bn_folded"]),
        "surgery_seconds": surgery_seconds,
        "latency": {},
    }
    for size in BATCH_SIZES:
        repeats = _repeats_within(timed, size, max_repeats, budget)
        # The probe in `_repeats_within` ran every model and path: warm.
        latency = measure_latency(
            timed, batch_sizes=(size,), warmup=0, repeats=repeats
        )["models"]
        base, copy, res = (latency[label] for label in timed)
        row["latency"][str(size)] = {
            "baseline_ms": 1e3 * base["seconds"][size],
            "result_ms": 1e3 * res["seconds"][size],
            "ratio": res["speedup"][size],
            "noise_ratio": copy["speedup"][size],
            "paths": f"{_short(base['path'][size])}/{_short(res['path'][size])}",
            "repeats": repeats,
        }
    return row


def _repeats_within(timed, size, max_repeats, budget):
    """As many repeats as fit in `budget` seconds, between 3 and
    `max_repeats`: one call can take seconds (XLA's depthwise convs at batch
    64) or a millisecond (an MLP at batch 1)."""
    from keras_collapse.report import measure_latency

    probe = measure_latency(timed, batch_sizes=(size,), warmup=1, repeats=1)
    per_repeat = sum(
        sum(entry["medians"][size].values()) for entry in probe["models"].values()
    )
    return max(3, min(max_repeats, int(budget / max(per_repeat, 1e-9))))


def _layers(model):
    """The layers of a model, by type and configuration, names left out."""
    return [
        (type(layer).__name__, {**layer.get_config(), "name": None})
        for layer in model.layers
    ]


def _short(path):
    return {"call": "c", "predict_on_batch": "p"}[path]


def stats_table(rows):
    header = ("case", "depth", "params", "MACs/sample", "merges", "residuals")
    lines = []
    for row in rows:
        b, a = row["before"], row["after"]
        lines.append(
            (
                f"({row['case']}) {CASES[row['case']]}",
                f"{b['depth']} -> {a['depth']}",
                f"{b['params']:,} -> {a['params']:,}",
                f"{_mega(b['macs'])} -> {_mega(a['macs'])}",
                row["merges"],
                row["residuals"],
            )
        )
    return table(header, lines)


def latency_table(rows, slower_than):
    header = ["case"]
    for size in BATCH_SIZES:
        header += [f"b{size} folded", "result", "ratio", "noise"]
    header += ["repeats", "paths"]
    lines = []
    for row in rows:
        cells = [f"({row['case']}) {CASES[row['case']]}"]
        for size in BATCH_SIZES:
            entry = row["latency"][str(size)]
            flag = " SLOWER" if _slower(row, entry, slower_than) else ""
            cells += [
                _ms(entry["baseline_ms"]),
                _ms(entry["result_ms"]),
                f"{entry['ratio']:.2f}x{flag}",
                f"{entry['noise_ratio']:.2f}x",
            ]
        entries = [row["latency"][str(s)] for s in BATCH_SIZES]
        cells.append("/".join(str(e["repeats"]) for e in entries))
        cells.append(" ".join(e["paths"] for e in entries))
        lines.append(cells)
    return table(header, lines, "<" + ">" * (len(header) - 2) + "<")


def combined_table(collected):
    header = ["case"] + [f"{b} b{s}" for b in collected for s in BATCH_SIZES]
    lines = []
    for case in CASES:
        cells = [f"({case}) {CASES[case]}"]
        for rows in collected.values():
            row = next((r for r in rows if r["case"] == case), None)
            for size in BATCH_SIZES:
                entry = row["latency"][str(size)] if row else None
                cells.append(
                    f"{entry['ratio']:.2f}x ({entry['noise_ratio']:.2f})"
                    if entry
                    else "-"
                )
        if any(cell != "-" for cell in cells[1:]):
            lines.append(cells)
    return table(header, lines)


def _mega(macs):
    return f"{macs / 1e6:.2f}M"


def _ms(milliseconds):
    """Three significant digits, no exponent: 0.816, 28.2, 1660."""
    digits = max(0, 2 - math.floor(math.log10(max(milliseconds, 1e-3))))
    return f"{milliseconds:.{digits}f} ms"


def run_here(args):
    lines = header_lines()
    rows = []
    for case in args.cases:
        began = time.perf_counter()
        rows.append(measure(case, args.repeats, args.budget))
        print(
            f"({case}) {CASES[case]}: measured in {time.perf_counter() - began:.0f} s "
            f"(surgery {rows[-1]['surgery_seconds']:.1f} s, relative deviation "
            f"{rows[-1]['deviation']:.1e})",
            flush=True,
        )
    text = "\n".join(
        [
            *lines,
            "",
            "Depth (weight layers on the longest path), params and MACs: "
            "original -> surgery result",
            stats_table(rows),
            "",
            wrap(
                "Latency, median per batch. ratio = BN-folded time / result "
                "time (> 1: the result is faster); noise = the same ratio "
                "between two copies of the BN-folded model (ideally 1.00); "
                "repeats per batch size; paths: call path used, c = model(x), "
                "p = predict_on_batch (folded/result, per batch size)."
            ),
            latency_table(rows, args.slower_than),
            *_notes(rows, args.slower_than),
        ]
    )
    print("\n" + text)
    write_json(args.json, rows, text)
    save(args.out, text)


def _slower(row, entry, slower_than):
    # Between identical graphs a ratio below 1 can only be noise.
    return entry["ratio"] < slower_than and not row["same_graph"]


def _notes(rows, slower_than):
    notes = []
    for row in rows:
        case = f"  ({row['case']})"
        by_reason = {}
        for kind, detail, layers in row["skipped"]:
            by_reason.setdefault((kind, detail), []).append(layers)
        for (kind, detail), where in by_reason.items():
            notes.append(
                f"{case} {kind} not done {len(where)}x: {detail} (e.g. {where[0]})"
            )
        if row["same_graph"]:
            notes.append(
                f"{case} the result has the same layers as the BN-folded model: "
                "its ratio measures noise only"
            )
        for size in BATCH_SIZES:
            if _slower(row, row["latency"][str(size)], slower_than):
                notes.append(
                    f"{case} the surgery result is SLOWER than its BN-folded "
                    f"input at batch {size}"
                )
    return ["", "Notes:", *notes] if notes else []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        default="".join(CASES),
        type=lambda s: [c for c in s.replace(",", "") if c],
        help="which cases to run, e.g. 'ac'. Default: all (abcd)",
    )
    parser.add_argument(
        "--repeats", type=int, default=50, help="most repeats. Default: 50"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=12.0,
        help="seconds of timed calls per case and batch size, which decide "
        "the repeats (at least 3). Default: 12",
    )
    parser.add_argument(
        "--slower-than",
        type=float,
        default=0.95,
        help="flag ratios below this as slower (0.95 leaves room for noise)",
    )
    add_run_options(parser)
    args = parser.parse_args()
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; expected some of {list(CASES)}")
    return dispatch(
        args,
        __file__,
        "Latency ratio, BN-folded time / surgery-result time (> 1: faster); in "
        "brackets the same ratio between two copies of the BN-folded model (noise)",
        combined_table,
        run_here,
    )


if __name__ == "__main__":
    sys.exit(main())
