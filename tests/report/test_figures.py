"""The figures, the library's and the benchmarks': whole numbers on the
epoch and count axes, legends outside every panel (issue 23: the legend
covered the first bar, the epoch axis showed 1.5, 2.5, ...)."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.report.channel_states import plot_rounds
from tests.testing import TestCase
from tests.testing import require


def renderer(fig):
    """An Agg renderer of `fig`, drawn (ticks and legends laid out); a figure
    the benchmarks closed gets a new Agg canvas."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def legends(fig):
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]


def assert_legends_outside_every_axes(fig):
    """Each legend's box overlaps no panel's box (twin axes included)."""
    found = legends(fig)
    assert found, "the figure has no legend"
    draw = renderer(fig)
    for legend in found:
        box = legend.get_window_extent(draw)
        for ax in fig.axes:
            if not ax.axison:
                continue
            panel = ax.get_window_extent(draw)
            assert not box.overlaps(panel), (
                f"legend {box.bounds} covers the axes {ax.get_title()!r} {panel.bounds}"
            )


def assert_whole_ticks(ax):
    renderer(ax.figure)
    low, high = sorted(ax.get_xlim())
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert len(ticks) >= 2, ticks
    assert all(float(t).is_integer() for t in ticks), ticks


@pytest.fixture(autouse=True)
def pyplot():
    plt = require("matplotlib.pyplot", "the figures")
    yield plt
    plt.close("all")


class TestLibraryFigures(TestCase):
    def test_rounds_have_whole_epochs_and_the_legend_outside(self):
        # NEPENTHECallback.plot() draws this: three rounds, two quantities.
        fig = plot_rounds(
            "rounds",
            [1, 2, 3],
            {
                "entropy (bits)": {"a": [0.9, 0.7, 0.4], "b": [1.0, None, 0.8]},
                "kernel sparsity": {"a": [0.2, 0.4, 0.6], "b": [0.1, 0.2, 0.3]},
            },
        )
        for ax in fig.axes:
            assert_whole_ticks(ax)
        assert_legends_outside_every_axes(fig)
        (legend,) = legends(fig)
        assert [t.get_text() for t in legend.get_texts()] == ["a", "b"]

    def test_channel_states_legend_leaves_the_bars_free(self):
        inputs = keras.Input((4,))
        h = keras.layers.Dense(4)(inputs)
        h = keras.layers.BatchNormalization()(h)
        h = kc.CollapsiblePReLU(name="act")(h)
        model = keras.Model(inputs, keras.layers.Dense(2)(h))
        fig = kc.analyze_batchnorm(model).plot()
        assert_legends_outside_every_axes(fig)
        (legend,) = legends(fig)
        texts = [t.get_text() for t in legend.get_texts()]
        assert len(texts) == 4 and "ON" in texts[0]  # three states and the score


def comparison_rows():
    rows = []
    for model, n in (("resnet20", 19), ("vgg", 7)):
        for seed in range(2):
            for run, objective, linearized in (
                ("base (BN folded)", None, 0),
                ("fine-tune control", None, 0),
                ("joint 30%", "activations", round(0.3 * n)),
                ("joint 50%", "activations", round(0.5 * n)),
            ):
                rows.append(
                    {
                        "model": model,
                        "run": run,
                        "objective": objective,
                        "seed": seed,
                        "linearized": linearized,
                        "activations": n,
                        "collapsed_accuracy": 0.8 + 0.01 * seed,
                    }
                )
    return rows


class TestBenchmarkFigures(TestCase):
    def test_comparison_legend_is_outside_the_panels(self, tmp_path):
        from benchmarks import collapse_comparison

        fig = collapse_comparison.plot(comparison_rows(), tmp_path / "cmp.png")
        assert (tmp_path / "cmp.png").stat().st_size > 0
        assert_legends_outside_every_axes(fig)
        (legend,) = legends(fig)
        assert len(legend.get_texts()) == 3  # base, control, joint

    def test_comparison_colours_one_method_alike_on_every_panel(self, tmp_path):
        from benchmarks import collapse_comparison

        rows = comparison_rows()
        # vgg lacks the base: the cycle of colours would shift on its panel.
        rows = [r for r in rows if not (r["model"] == "vgg" and "base" in r["run"])]
        fig = collapse_comparison.plot(rows, tmp_path / "cmp.png")
        colours = []
        for ax in fig.axes:
            named = dict(zip(*reversed(ax.get_legend_handles_labels())))
            colours.append(
                {label: tuple(h[0].get_color()) for label, h in named.items()}
            )
        first, second = colours
        shared = set(first) & set(second)
        assert {"fine-tune control", "joint [activations]"} <= shared
        for label in shared:
            assert first[label] == second[label], label
        assert len({first[label] for label in first}) == len(first)

    def test_linearization_counts_are_whole_and_legends_outside(self, tmp_path):
        from benchmarks import linearization_fashion_mnist

        rows = [
            {
                "model": model,
                "run": run,
                "linearized": linearized,
                "activations": 19,
                "collapsed_accuracy": float(accuracy),
                "speedup_b64": 1.0,
            }
            for model in ("resnet20", "mobilenetv2")
            for run, linearized, accuracy in zip(
                ("base", "control", "TLC", "EASIER", "random"),
                (0, 0, 2, 3, 2),
                np.linspace(0.77, 0.83, 5),
            )
        ]
        fig = linearization_fashion_mnist.plot(rows, {}, tmp_path / "lin.png")
        top = [ax for ax in fig.axes if ax.axison and ax.get_legend()]
        assert len(top) == 2
        for ax in top:
            assert_whole_ticks(ax)
        assert_legends_outside_every_axes(fig)
