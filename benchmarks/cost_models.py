"""The surgery's merges chosen by MACs vs by measured time, per backend.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/cost_models.py
    .venv/bin/python benchmarks/cost_models.py --backends jax,tensorflow,torch \\
        --out benchmarks/results/cost_models.txt

For each of the four cases of `benchmarks/latency.py`, three models are
timed interleaved in one process (`measure_latency`, batch 1 and 64): the
BN-folded baseline (`surgery(model, merge=False, cut_dead_channels=False)`),
`surgery(model)` (the default `MacCostModel`: merges that cut MACs) and
`surgery(model, cost_model=MeasuredCostModel(batch_size=b))` (merges that
cut the time measured on this backend for each layer shape, at the batch it
is timed at). Printed: each result's latency ratio over the baseline (> 1:
faster), and the layers each kept.
"""

import argparse
import sys
import time

from common import add_run_options
from common import dispatch
from common import header_lines
from common import save
from common import table
from common import wrap
from common import write_json
from latency import BATCH_SIZES
from latency import CASES
from latency import build


def measure(case, repeats):
    import keras_collapse as kc

    model = build(case)
    baseline = kc.surgery(model, merge=False, cut_dead_channels=False)
    by_macs = kc.surgery(model)
    row = {"case": case, "layers": {}, "ratio": {}, "cost_model_seconds": {}}
    row["layers"]["baseline"] = len(baseline.layers)
    row["layers"]["MACs"] = len(by_macs.layers)
    for size in BATCH_SIZES:
        began = time.perf_counter()
        measured = kc.surgery(model, cost_model=kc.MeasuredCostModel(batch_size=size))
        row["cost_model_seconds"][str(size)] = time.perf_counter() - began
        row["layers"][f"measured b{size}"] = len(measured.layers)
        timed = {"baseline": baseline, "MACs": by_macs, "measured": measured}
        latency = kc.measure_latency(timed, batch_sizes=(size,), repeats=repeats)
        row["ratio"][str(size)] = {
            label: latency["models"][label]["speedup"][size]
            for label in ("MACs", "measured")
        }
    return row


def results_table(rows):
    header = ["case", "layers: folded / MACs / measured b1, b64"]
    header += [f"b{s} {m}" for s in BATCH_SIZES for m in ("MACs", "measured")]
    lines = []
    for row in rows:
        layers = row["layers"]
        cells = [
            f"({row['case']}) {CASES[row['case']]}",
            f"{layers['baseline']} / {layers['MACs']} / "
            + ", ".join(str(layers[f"measured b{s}"]) for s in BATCH_SIZES),
        ]
        for size in BATCH_SIZES:
            ratio = row["ratio"][str(size)]
            cells += [f"{ratio['MACs']:.2f}x", f"{ratio['measured']:.2f}x"]
        lines.append(cells)
    return table(header, lines)


def combined_table(collected):
    header = ["case"]
    for backend in collected:
        header += [f"{backend} b{s} MACs/measured" for s in BATCH_SIZES]
    lines = []
    for case in CASES:
        cells = [f"({case}) {CASES[case]}"]
        for rows in collected.values():
            row = next((r for r in rows if r["case"] == case), None)
            for size in BATCH_SIZES:
                if row is None:
                    cells.append("-")
                    continue
                ratio = row["ratio"][str(size)]
                cells.append(f"{ratio['MACs']:.2f}/{ratio['measured']:.2f}x")
        lines.append(cells)
    return table(header, lines)


LEGEND = (
    "ratio: BN-folded baseline time / result time, median of {repeats} "
    "interleaved repeats (> 1: the result is faster); MACs: surgery(model); "
    "measured: surgery(model, cost_model=MeasuredCostModel(batch_size=b)), "
    "timed at that batch size b. layers: Keras layers of each model."
)


def run_here(args):
    lines = header_lines()
    rows = []
    for case in args.cases:
        began = time.perf_counter()
        rows.append(measure(case, args.repeats))
        print(f"({case}): measured in {time.perf_counter() - began:.0f} s", flush=True)
    text = "\n".join(
        [*lines, "", results_table(rows), "", wrap(LEGEND.format(repeats=args.repeats))]
    )
    print("\n" + text)
    write_json(args.json, rows, text)
    save(args.out, text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="".join(CASES), help="e.g. 'ac'")
    parser.add_argument("--repeats", type=int, default=15)
    add_run_options(parser)
    args = parser.parse_args()
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; expected some of {list(CASES)}")
    return dispatch(
        args,
        __file__,
        "Latency ratio over the BN-folded model: merges by MACs / by measured time",
        combined_table,
        run_here,
    )


if __name__ == "__main__":
    sys.exit(main())
