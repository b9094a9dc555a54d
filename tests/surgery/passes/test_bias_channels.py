"""Border-aware biases carried by a constant channel instead of a layer:
the result computes what the model computes (the oracle), with one layer
fewer per merge that needed a bias map."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.layers.bias_map import is_bias_map
from tests.surgery.test_entry import bn
from tests.testing import TestCase

layers = keras.layers


def merged_block(source="conv", strides=1, activation="relu", shared_axes="all"):
    """source -> [act] -> 1x1 (BN: a bias) -> linear -> 3x3 "same"."""
    inputs = keras.Input((9, 9, 3))
    h = inputs
    if source == "conv":
        h = layers.Conv2D(5, 3, padding="same", name="source")(h)
    elif source == "dense":
        h = layers.Dense(5, name="source")(h)
    if activation is not None:
        h = kc.CollapsibleActivation(
            activation, alpha_regularizer=None, shared_axes=shared_axes, name="act"
        )(h)
    h = bn(layers.Conv2D(6, 1, use_bias=False, name="pointwise")(h), 3)
    locked = kc.CollapsibleActivation(alpha_regularizer=None, name="locked")
    h = locked(h)
    locked.lock_linear()
    h = layers.Conv2D(4, 3, strides=strides, padding="same", name="spatial")(h)
    return keras.Model(inputs, layers.Conv2D(2, 1, name="head")(h))


# A cost model that prices every layer far above any MAC: the constant channel
# always pays. By MACs alone (the default) a bias layer is free and stays.
PER_LAYER = kc.MacCostModel(layer_overhead=1e9)


class TestBiasChannels(TestCase):
    def collapse(self, model, cost_model=PER_LAYER):
        x = self.random_inputs((3, 9, 9, 3), seed=1, scale=2.0)
        small, report = kc.surgery(model, return_report=True, cost_model=cost_model)
        self.assert_close(small(x), model(x), atol=1e-4)
        return small, report

    @pytest.mark.parametrize("strides", [1, 2])
    @pytest.mark.parametrize("source", ["conv", "dense"])
    def test_bias_map_becomes_a_constant_channel(self, source, strides):
        model = merged_block(source, strides)
        small, report = self.collapse(model)
        assert report.count("bias_channel") == 1
        assert not any(is_bias_map(layer) for layer in small.layers)
        # One more output channel at the source, one more input channel at
        # the merged conv.
        assert small.get_layer("source").get_weights()[0].shape[-1] == 6
        # pointwise, spatial and head merged into one 3x3 conv.
        assert tuple(small.layers[-1].kernel.shape) == (3, 3, 5 + 1, 2)

    def test_by_macs_alone_the_bias_layer_stays(self):
        small, report = self.collapse(merged_block("conv"), cost_model=None)
        assert report.count("bias_channel") == 0
        assert sum(is_bias_map(layer) for layer in small.layers) == 1
        assert any("costs more" in e.detail for e in report.skipped)

    def test_without_a_source_the_bias_map_stays(self):
        small, report = self.collapse(merged_block(source=None, activation=None))
        assert report.count("bias_channel") == 0
        assert sum(is_bias_map(layer) for layer in small.layers) == 1
        assert any(e.kind == "bias_channel" for e in report.skipped)

    @pytest.mark.parametrize(
        "activation, shared_axes", [("gelu", "all"), ("relu", [1, 2])]
    )
    def test_an_activation_that_cannot_carry_ones_keeps_the_layer(
        self, activation, shared_axes
    ):
        # gelu(1) != 1; per-channel slopes have none for a new channel.
        small, report = self.collapse(merged_block("conv", 1, activation, shared_axes))
        assert report.count("bias_channel") == 0
        assert sum(is_bias_map(layer) for layer in small.layers) == 1

    def test_mobilenet_v2_style_fully_collapsed_has_no_bias_layer(self):
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
        import models

        model = models.mobilenet_v2_style(lock="all")
        x = self.random_inputs((2, *model.input_shape[1:]))
        small, report = kc.surgery(model, return_report=True, cost_model=PER_LAYER)
        self.assert_close(small(x), model(x), atol=1e-4, rtol=1e-4)
        assert report.count("bias_channel") == 10
        assert not any(is_bias_map(layer) for layer in small.layers)
        assert np.isfinite(report.deviation)
