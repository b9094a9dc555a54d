"""Wall time of `surgery` vs model size, relative to one `clone_model`.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/surgery_time.py
    KERAS_BACKEND=jax .venv/bin/python benchmarks/surgery_time.py --quick
    .venv/bin/python benchmarks/surgery_time.py --backends jax,tensorflow,torch
    .venv/bin/python benchmarks/surgery_time.py --backends jax,torch --threads 1

For each model, one untimed warm-up of every step (imports, tracing and
other lazy initialization do not count), then `--runs` rounds, each timing
`keras.models.clone_model(model)`, `surgery(model, verify=False)` and
`surgery(model)` (which also runs both models on random inputs to check the
result) one after the other, in an order that rotates between rounds. The
table gives medians and the ratios surgery / clone, from which the speed of
the machine largely cancels: what the surgery costs in units of rebuilding
the model once.
"""

import argparse
import gc
import statistics
import sys
import time

from common import add_run_options
from common import dispatch
from common import header_lines
from common import save
from common import table
from common import wrap
from common import write_json

QUICK = ("mlp_4", "mlp_16", "conv_chain_16", "mobilenet_v2_style")
DEFAULT = (
    "mlp_4",
    "mlp_16",
    "mlp_64",
    "conv_chain_16",
    "conv_chain_64",
    "resnet20_style",
    "mobilenet_v2_style",
    "keras_mobilenet_v2_0.35",
    "keras_resnet50",
)


def build(name):
    import models

    builders = {
        "mlp_4": lambda: models.mlp_chain(4),
        "mlp_16": lambda: models.mlp_chain(16),
        "mlp_64": lambda: models.mlp_chain(64),
        "conv_chain_16": lambda: models.conv_chain(8),
        "conv_chain_64": lambda: models.conv_chain(32),
        "resnet20_style": models.resnet20_style,
        "mobilenet_v2_style": lambda: models.mobilenet_v2_style(lock="all"),
        "keras_mobilenet_v2_0.35": lambda: models.keras_mobilenet_v2(alpha=0.35),
        "keras_resnet50": models.keras_resnet50,
    }
    return builders[name]()


def measure(name, runs):
    """Times the three steps on one model. Returns a row."""
    import keras

    from keras_collapse.report import model_stats
    from keras_collapse.surgery import surgery

    model = build(name)
    steps = {
        "surgery": lambda: surgery(model),
        "clone": lambda: keras.models.clone_model(model),
        "surgery_no_verify": lambda: surgery(model, verify=False),
    }
    # Warm-up, the user's first call first: it pays for whatever the backend
    # prepares per layer shape (JAX compiles each new initializer shape).
    began = time.perf_counter()
    result = steps["surgery"]()
    first_call = time.perf_counter() - began
    for label in ("clone", "surgery_no_verify"):
        steps[label]()
    times = {label: [] for label in steps}
    labels = list(steps)
    for run in range(runs):
        start = run % len(labels)
        for label in labels[start:] + labels[:start]:
            gc.collect()
            began = time.perf_counter()
            steps[label]()
            times[label].append(time.perf_counter() - began)
    seconds = {label: statistics.median(t) for label, t in times.items()}
    before = model_stats(model)
    after = model_stats(result)
    return {
        "model": name,
        "layers": before.layers,
        "params": before.params,
        "depth": f"{before.depth} -> {after.depth}",
        "layers_after": after.layers,
        "seconds": seconds,
        "first_call": first_call,
        "runs": runs,
    }


def results_table(rows):
    header = (
        "model",
        "layers",
        "params",
        "depth",
        "clone",
        "surgery",
        "ratio",
        "+verify",
        "ratio",
        "ms/layer",
        "first call",
    )
    lines = []
    for row in rows:
        s = row["seconds"]
        lines.append(
            (
                row["model"],
                f"{row['layers']} -> {row['layers_after']}",
                f"{row['params']:,}",
                row["depth"],
                f"{s['clone']:.2f} s",
                f"{s['surgery_no_verify']:.2f} s",
                f"{s['surgery_no_verify'] / s['clone']:.1f}x",
                f"{s['surgery']:.2f} s",
                f"{s['surgery'] / s['clone']:.1f}x",
                f"{1e3 * s['surgery_no_verify'] / row['layers']:.1f}",
                f"{row['first_call']:.2f} s",
            )
        )
    return table(header, lines)


def combined_table(collected):
    header = ["model", "layers"]
    for backend in collected:
        header += [f"{backend} surgery", "+verify", "first call"]
    names = list(dict.fromkeys(r["model"] for rows in collected.values() for r in rows))
    lines = []
    for name in names:
        cells = [name, ""]
        for rows in collected.values():
            row = next((r for r in rows if r["model"] == name), None)
            if row is None:
                cells += ["-", "-", "-"]
                continue
            s = row["seconds"]
            cells[1] = str(row["layers"])
            cells += [
                f"{s['surgery_no_verify'] / s['clone']:.1f}x",
                f"{s['surgery'] / s['clone']:.1f}x",
                f"{row['first_call']:.1f} s",
            ]
        lines.append(cells)
    return table(header, lines)


LEGEND = (
    "layers: layer nodes before -> after the surgery; depth: weight layers on "
    "the longest path; clone: one keras.models.clone_model; surgery: "
    "surgery(model, verify=False); +verify: surgery(model) (also runs both "
    "models once); ratio: over clone; ms/layer: surgery without verification "
    "per layer of the input. Median of {runs} timed run(s) after one warm-up. "
    "first call: the warm-up surgery(model), the first on this model in the "
    "process (the first model also pays for lazy imports)."
)


def run_here(args):
    names = QUICK if args.quick else DEFAULT
    if args.models:
        names = args.models
    runs = 1 if args.quick and args.runs is None else args.runs or 3
    lines = header_lines()
    rows = []
    for name in names:
        began = time.perf_counter()
        rows.append(measure(name, runs))
        print(f"{name}: measured in {time.perf_counter() - began:.0f} s", flush=True)
    text = "\n".join(
        [*lines, "", results_table(rows), "", wrap(LEGEND.format(runs=runs))]
    )
    print("\n" + text)
    write_json(args.json, rows, text)
    save(args.out, text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {', '.join(QUICK)}, 1 run"
    )
    parser.add_argument(
        "--models",
        type=lambda s: [m for m in s.split(",") if m],
        help=f"comma-separated subset of {', '.join(DEFAULT)}",
    )
    parser.add_argument("--runs", type=int, help="timed runs per step. Default: 3")
    add_run_options(parser)
    args = parser.parse_args()
    unknown = sorted(set(args.models or ()) - set(DEFAULT))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; expected some of {list(DEFAULT)}")
    return dispatch(
        args,
        __file__,
        "Surgery wall time / one clone_model of the same model (medians), and the "
        "first surgery(model) call on each model, in seconds",
        combined_table,
        run_here,
    )


if __name__ == "__main__":
    sys.exit(main())
