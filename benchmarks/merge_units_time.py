"""Wall time of `merge_units(model)`, relative to one `clone_model`.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/merge_units_time.py
    .venv/bin/python benchmarks/merge_units_time.py --backends jax,tensorflow,torch \\
        --out benchmarks/results/merge_units_time.txt

A callback with `objective="depth"` calls `merge_units` at every decision.
For Keras' ResNet50 and MobileNetV2 at 224x224 (random weights, every
activation collapsible), one untimed call, then `--runs` rounds timing
`keras.models.clone_model(model)` and `merge_units(model)` in turn; medians,
the dry runs made and the ratio merge_units / clone.
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

MODELS = ("ResNet50", "MobileNetV2")


def measure(name, runs):
    import keras

    import keras_collapse as kc

    app = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    model = kc.make_collapsible(app)
    found = kc.merge_units(model)  # warm-up
    times = {"clone": [], "merge_units": []}
    for _ in range(runs):
        for label, step in (
            ("clone", lambda: keras.models.clone_model(model)),
            ("merge_units", lambda: kc.merge_units(model)),
        ):
            gc.collect()
            began = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - began)
    seconds = {label: statistics.median(t) for label, t in times.items()}
    return {
        "model": name,
        "activations": len(found.candidates),
        "units": len(found.units),
        "dry_runs": found.dry_runs,
        "seconds": seconds,
        "ratio": seconds["merge_units"] / seconds["clone"],
    }


def results_table(rows):
    return table(
        ("model", "activations", "units", "dry runs", "clone", "merge_units", "ratio"),
        [
            (
                r["model"],
                r["activations"],
                r["units"],
                r["dry_runs"],
                f"{r['seconds']['clone']:.2f} s",
                f"{r['seconds']['merge_units']:.2f} s",
                f"{r['ratio']:.2f}x",
            )
            for r in rows
        ],
    )


def combined_table(collected):
    header = ["model", *[f"{b} merge_units / clone" for b in collected]]
    lines = []
    for name in MODELS:
        cells = [name]
        for rows in collected.values():
            row = next((r for r in rows if r["model"] == name), None)
            cells.append(
                "-"
                if row is None
                else f"{row['ratio']:.2f}x ({row['seconds']['merge_units']:.2f} s)"
            )
        lines.append(cells)
    return table(header, lines)


LEGEND = (
    "clone: one keras.models.clone_model(model); merge_units: the analysis "
    "(graph read once, base simplified once, one dry run per candidate group); "
    "medians of {runs} rounds after one warm-up."
)


def run_here(args):
    lines = header_lines()
    rows = [measure(name, args.runs) for name in MODELS]
    text = "\n".join(
        [*lines, "", results_table(rows), "", wrap(LEGEND.format(runs=args.runs))]
    )
    print("\n" + text)
    write_json(args.json, rows, text)
    save(args.out, text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    add_run_options(parser)
    args = parser.parse_args()
    return dispatch(
        args,
        __file__,
        "merge_units wall time / one clone_model (medians)",
        combined_table,
        run_here,
    )


if __name__ == "__main__":
    sys.exit(main())
