"""Wall time of `activation_statistics(model, x)` vs one `model.predict(x)`.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/activation_statistics_time.py
    .venv/bin/python benchmarks/activation_statistics_time.py \\
        --backends jax,tensorflow,torch

`activation_statistics` runs the model's layers once over the data and
reduces, inside the compiled function, per-channel moments of every
collapsible activation's input: it should cost about one inference pass.
For each model, on random inputs (4096 images of 32x32x3 by default, batch
128), both are warmed up (one untimed call each: tracing and compiling),
then timed `--repeats` times in an order that alternates between rounds;
medians. The ratio statistics / predict is the number that matters (the
target: at most 1.5x). `first call` is the warm-up `activation_statistics`
call, timed too. `reused probe` runs the probe model that
`activation_statistics` builds, built once and kept (a diagnostic of the
library's internals: what a call costs without building and tracing its
probe model again).
"""

import argparse
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

MODELS = {
    "resnet20": "ResNet-20-style (19 activations)",
    "cnn6": "6-block CNN 16-16-32-32-64-64 (6 activations)",
}
TARGET = 1.5


def build(name):
    import models

    if name == "resnet20":
        return models.resnet20_style(lock=False)
    return models.cnn_blocks()


def reused_probe(model):
    """A `run(x, batch_size)` of the probe `activation_statistics` builds,
    built once; None if the library's internals changed."""
    try:
        from keras_collapse.collapsible import collapsible_layers
        from keras_collapse.graph import Graph
        from keras_collapse.graph.channel_moments import MomentsProbe
        from keras_collapse.graph.channel_moments import channel_axis

        graph = Graph.from_model(model)
        chosen = {id(layer) for layer in collapsible_layers(model)}
        taps = [
            (node.input_refs[0], channel_axis(graph, node.input_refs[0]))
            for node in graph.layer_nodes()
            if id(node.layer) in chosen
        ]
        probe = MomentsProbe(model, graph, taps)
    except Exception as e:  # a diagnostic only
        print(f"reused probe not measured ({type(e).__name__}: {e})", flush=True)
        return None
    return lambda x, batch_size: probe.run(x, batch_size=batch_size)


def timed(fn):
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def measure(name, samples, batch_size, repeats):
    import numpy as np

    import keras_collapse as kc

    model = build(name)
    x = np.random.default_rng(0).normal(size=(samples, 32, 32, 3)).astype("float32")
    calls = {
        "predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
        "statistics": lambda: kc.activation_statistics(model, x, batch_size=batch_size),
    }
    probe = reused_probe(model)
    if probe is not None:
        calls["reused probe"] = lambda: probe(x, batch_size)
    first = {label: timed(fn) for label, fn in calls.items()}  # warm-up
    seconds = {label: [] for label in calls}
    labels = list(calls)
    for r in range(repeats):
        for label in labels if r % 2 == 0 else labels[::-1]:
            seconds[label].append(timed(calls[label]))
    median = {label: statistics.median(values) for label, values in seconds.items()}
    stats = kc.activation_statistics(model, x, batch_size=batch_size)
    return {
        "model": name,
        "samples": samples,
        "batch_size": batch_size,
        "activations": len(stats),
        "first": first,
        "seconds": seconds,
        "median": median,
        "ratio": median["statistics"] / median["predict"],
        "probe_ratio": (
            median["reused probe"] / median["predict"]
            if "reused probe" in median
            else None
        ),
    }


def _ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def _s(value):
    return "-" if value is None else f"{value:.2f} s"


def result_table(rows):
    header = (
        "model",
        "predict",
        "statistics",
        "ratio",
        "first call",
        "reused probe",
        "probe ratio",
        "repeats",
    )
    lines = [
        (
            MODELS[r["model"]],
            _s(r["median"]["predict"]),
            _s(r["median"]["statistics"]),
            _ratio(r["ratio"]) + (" OVER" if r["ratio"] > TARGET else ""),
            _s(r["first"]["statistics"]),
            _s(r["median"].get("reused probe")),
            _ratio(r["probe_ratio"]),
            len(r["seconds"]["predict"]),
        )
        for r in rows
    ]
    return table(header, lines)


def combined_table(collected):
    header = ["model"]
    for backend in collected:
        header += [f"{backend} ratio", f"{backend} probe", f"{backend} predict"]
    lines = []
    for name in MODELS:
        cells = [MODELS[name]]
        for rows in collected.values():
            row = next((r for r in rows if r["model"] == name), None)
            cells += (
                [
                    _ratio(row["ratio"]),
                    _ratio(row["probe_ratio"]),
                    _s(row["median"]["predict"]),
                ]
                if row
                else ["-", "-", "-"]
            )
        if any(cell != "-" for cell in cells[1:]):
            lines.append(cells)
    return table(header, lines)


def run_here(args):
    lines = header_lines()
    rows = []
    for name in args.models:
        began = time.perf_counter()
        rows.append(measure(name, args.samples, args.batch_size, args.repeats))
        print(
            f"{name}: measured in {time.perf_counter() - began:.0f} s, ratio "
            f"{rows[-1]['ratio']:.2f}x",
            flush=True,
        )
    text = "\n".join(
        [
            *lines,
            "",
            wrap(
                f"{args.samples} random 32x32x3 inputs, batch {args.batch_size}; "
                f"median of {args.repeats} calls after one untimed warm-up each. "
                "ratio = activation_statistics(model, x) / model.predict(x) "
                f"(target <= {TARGET}x; OVER marks a miss); first call = the "
                "warm-up activation_statistics call; reused probe = the probe "
                "model built once and run again (no rebuild, no retrace)."
            ),
            result_table(rows),
        ]
    )
    print("\n" + text)
    write_json(args.json, rows, text)
    save(args.out, text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        type=lambda s: [m for m in s.split(",") if m],
        help=f"comma-separated subset of {list(MODELS)}. Default: all",
    )
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    add_run_options(parser)
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; expected some of {list(MODELS)}")
    return dispatch(
        args,
        __file__,
        "activation_statistics(model, x) time / model.predict(x) time "
        f"(target <= {TARGET}x); probe: the probe model reused; predict: "
        "seconds per predict",
        combined_table,
        run_here,
    )


if __name__ == "__main__":
    sys.exit(main())
