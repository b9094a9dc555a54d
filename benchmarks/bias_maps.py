"""The forms of a fully collapsed MobileNetV2-style net vs its ceiling.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/bias_maps.py
    .venv/bin/python benchmarks/bias_maps.py --backends jax,tensorflow,torch \\
        --out benchmarks/results/bias_maps.txt

Every merged block of case (a) of `benchmarks/latency.py` (all 10 blocks
linear) needs a border-aware bias. Timed side by side in one process
(`measure_latency`, batch 1 and 64), as ratios over the BN-folded input:
- surgery (default): `surgery(model)`; each border-aware bias carried forward
  into the next one (`passes/bias_push`): one `Rescaling` offset layer is
  left, before the head's ReLU;
- a layer per bias: the form before `bias_push` (each bias a `Rescaling`
  layer after its conv), the pass switched off for this row;
- constant channels: every bias read from a constant input channel of its
  conv instead (`passes/bias_channels`), forced by a cost model that prices
  each layer far above any MAC, with `bias_push` off;
- measured b1: `surgery(model, cost_model=MeasuredCostModel(batch_size=1))`;
- ceiling: the default form with its bias layers dropped, plain convs of the
  same shapes (it computes something else: only its time is meaningful).
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


def forms():
    import models

    import keras_collapse as kc
    from keras_collapse.graph import Graph
    from keras_collapse.layers.bias_map import is_bias_map
    from keras_collapse.surgery.passes import pipeline

    model = models.mobilenet_v2_style(lock="all")
    default = kc.surgery(model)
    measured = kc.surgery(model, cost_model=kc.MeasuredCostModel(batch_size=1))
    push = pipeline.push_bias_maps
    pipeline.push_bias_maps = lambda graph, journal: 0  # the earlier forms
    try:
        layered = kc.surgery(model)  # by MACs, a bias layer is free: kept
        channels = kc.surgery(model, cost_model=kc.MacCostModel(layer_overhead=1e12))
    finally:
        pipeline.push_bias_maps = push
    # The ceiling: the default graph with its bias layers bypassed.
    graph = Graph.from_model(default)
    for node in graph.layer_nodes():
        if is_bias_map(node.layer):
            graph.bypass(node)
    return {
        "BN-folded": kc.surgery(model, merge=False, cut_dead_channels=False),
        "surgery (default)": default,
        "a layer per bias": layered,
        "constant channels": channels,
        "measured b1": measured,
        "ceiling": graph.to_model(name="ceiling"),
    }


def measure(repeats):
    import keras_collapse as kc

    timed = forms()
    result = kc.measure_latency(timed, batch_sizes=(1, 64), repeats=repeats)
    return [
        {
            "form": label,
            "layers": len(model.layers),
            "ratio": {str(b): r for b, r in result["models"][label]["speedup"].items()},
        }
        for label, model in timed.items()
    ]


def results_table(rows):
    return table(
        ("form", "layers", "ratio b1", "ratio b64"),
        [
            (
                r["form"],
                r["layers"],
                f"{r['ratio']['1']:.2f}x",
                f"{r['ratio']['64']:.2f}x",
            )
            for r in rows
        ],
    )


def combined_table(collected):
    header = ["form", *[f"{b} b1/b64" for b in collected]]
    lines = []
    for form in (
        "BN-folded",
        "surgery (default)",
        "a layer per bias",
        "constant channels",
        "measured b1",
        "ceiling",
    ):
        cells = [form]
        for rows in collected.values():
            row = next((r for r in rows if r["form"] == form), None)
            cells.append(
                "-"
                if row is None
                else f"{row['ratio']['1']:.2f}/{row['ratio']['64']:.2f}x"
            )
        lines.append(cells)
    return table(header, lines)


LEGEND = (
    "ratio: BN-folded time / form time, median of {repeats} interleaved repeats "
    "(> 1: faster than the BN-folded input). surgery (default) = surgery(model), "
    "the border-aware biases carried forward into one Rescaling layer; a layer "
    "per bias = the form before that; constant channels = each read from a "
    "constant input channel; measured b1 = the measured cost model's choice; "
    "ceiling = plain convs of the merged shapes."
)


def run_here(args):
    lines = header_lines()
    began = time.perf_counter()
    rows = measure(args.repeats)
    print(f"measured in {time.perf_counter() - began:.0f} s", flush=True)
    text = "\n".join(
        [*lines, "", results_table(rows), "", wrap(LEGEND.format(repeats=args.repeats))]
    )
    print("\n" + text)
    write_json(args.json, rows, text)
    save(args.out, text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    add_run_options(parser)
    args = parser.parse_args()
    return dispatch(
        args,
        __file__,
        "Fully collapsed MobileNetV2-style: latency ratio over the BN-folded input",
        combined_table,
        run_here,
    )


if __name__ == "__main__":
    sys.exit(main())
