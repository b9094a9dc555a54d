"""The merge pass on its own (`surgery/passes/merge.py`): runs of linear
layers become one layer whose weights and outputs match a NumPy oracle (the
composed affine map, or the original layers applied one by one)."""

import keras
import numpy as np
import pytest

from keras_collapse.graph import Graph
from keras_collapse.graph.random_arrays import NOMINAL_SIZE
from keras_collapse.layers.bias_map import is_bias_map
from keras_collapse.surgery.cost_models import MacCostModel
from keras_collapse.surgery.passes.journal import Journal
from keras_collapse.surgery.passes.merge import LinearOp
from keras_collapse.surgery.passes.merge import compose
from keras_collapse.surgery.passes.merge import find_runs
from keras_collapse.surgery.passes.merge import linear_op
from keras_collapse.surgery.passes.merge import merge_runs
from keras_collapse.surgery.passes.merge import positions
from tests.algebra import numpy_conv
from tests.testing import TestCase

layers = keras.layers


def randomize(model, seed=0):
    """Random weights, biases included (fresh layers have zero biases)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights(
            [rng.standard_normal(w.shape).astype(w.dtype) for w in layer.get_weights()]
        )
    return model


def oracle(model, x):
    """The model's conv/dense layers applied one by one in NumPy (float64)."""
    y = np.asarray(x, "float64")
    for layer in model.layers[1:]:
        weights = layer.get_weights()
        bias = weights[1] if layer.use_bias else None
        if isinstance(layer, layers.Dense):
            y = y @ weights[0] + (0 if bias is None else bias)
        else:
            y = numpy_conv.conv(
                y,
                weights[0],
                bias,
                tuple(layer.strides),
                layer.padding,
                depthwise=isinstance(layer, layers.DepthwiseConv2D),
            )
    return y


class TestMergeRuns(TestCase):
    def merge(self, model, exact=True, cost_model=None):
        graph = Graph.from_model(model)
        journal = Journal()
        removed = merge_runs(graph, journal, cost_model or MacCostModel(), exact)
        return graph.to_model(), removed, journal

    def test_dense_into_dense_is_the_product_of_the_kernels(self):
        inputs = keras.Input((5,))
        h = layers.Dense(7)(inputs)
        model = randomize(keras.Model(inputs, layers.Dense(3)(h)))
        merged, removed, journal = self.merge(model)
        assert removed == 1 and len(merged.layers) == 2
        (w1, b1), (w2, b2) = (layer.get_weights() for layer in model.layers[1:])
        kernel, bias = merged.layers[1].get_weights()
        self.assert_close(kernel, w1 @ w2, atol=1e-5, rtol=1e-5)
        self.assert_close(bias, b1 @ w2 + b2, atol=1e-5, rtol=1e-5)
        x = self.random_inputs((4, 5))
        self.assert_close(merged(x), oracle(model, x), atol=1e-4, rtol=1e-4)
        assert journal.count("merge") == 1

    def test_the_last_layers_activation_is_kept(self):
        inputs = keras.Input((5,))
        h = layers.Dense(4)(inputs)
        model = randomize(keras.Model(inputs, layers.Dense(3, "relu")(h)))
        merged, removed, _ = self.merge(model)
        assert removed == 1
        x = self.random_inputs((6, 5))
        self.assert_close(
            merged(x), np.maximum(oracle(model, x), 0), atol=1e-4, rtol=1e-4
        )

    @pytest.mark.parametrize("strides", [1, 2])
    def test_valid_conv_into_valid_conv(self, strides):
        inputs = keras.Input((11, 11, 2))
        h = layers.Conv2D(4, 3, strides=strides)(inputs)
        model = randomize(keras.Model(inputs, layers.Conv2D(3, 3)(h)))
        merged, removed, _ = self.merge(model, cost_model=MacCostModel(1e9))
        assert removed == 1
        conv = merged.layers[1]
        assert tuple(conv.kernel_size) == (3 + 2 * strides,) * 2
        assert tuple(conv.strides) == (strides,) * 2
        x = self.random_inputs((2, 11, 11, 2))
        self.assert_close(merged(x), oracle(model, x), atol=1e-4, rtol=1e-4)

    def test_depthwise_into_pointwise_is_one_conv(self):
        inputs = keras.Input((6, 6, 3))
        h = layers.DepthwiseConv2D(3, padding="same")(inputs)
        model = randomize(keras.Model(inputs, layers.Conv2D(2, 1)(h)))
        # By MACs alone the dense 3x3 costs more: a layer's own cost decides.
        _, removed, _ = self.merge(model)
        assert removed == 0
        merged, removed, _ = self.merge(model, cost_model=MacCostModel(1e9))
        assert removed == 1 and type(merged.layers[1]) is layers.Conv2D
        x = self.random_inputs((2, 6, 6, 3))
        self.assert_close(merged(x), oracle(model, x), atol=1e-4, rtol=1e-4)

    def test_a_pointwise_bias_into_a_same_conv_leaves_a_bias_map(self):
        inputs = keras.Input((6, 6, 2))
        h = layers.Conv2D(3, 1)(inputs)
        model = randomize(keras.Model(inputs, layers.Conv2D(4, 3, padding="same")(h)))
        merged, removed, journal = self.merge(model, cost_model=MacCostModel(1e9))
        assert removed == 1
        assert sum(is_bias_map(layer) for layer in merged.layers) == 1
        assert "border-aware bias map" in journal.done[0].detail
        x = self.random_inputs((2, 6, 6, 2))
        self.assert_close(merged(x), oracle(model, x), atol=1e-4, rtol=1e-4)

    def test_same_into_same_is_merged_only_when_inexact_is_allowed(self):
        inputs = keras.Input((8, 8, 2))
        h = layers.Conv2D(2, 3, padding="same")(inputs)
        model = randomize(keras.Model(inputs, layers.Conv2D(2, 3, padding="same")(h)))
        cost = MacCostModel(1e9)  # a layer costs more than any MACs saved
        kept, removed, journal = self.merge(model, exact=True, cost_model=cost)
        assert removed == 0 and len(kept.layers) == 3
        assert "exact only away from the border" in journal.skipped[0].detail
        merged, removed, journal = self.merge(model, exact=False, cost_model=cost)
        assert removed == 1 and "interior-only" in journal.done[0].detail
        x = self.random_inputs((1, 8, 8, 2))
        got, want = keras.ops.convert_to_numpy(merged(x)), oracle(model, x)
        self.assert_close(got[:, 2:-2, 2:-2], want[:, 2:-2, 2:-2], atol=1e-4)
        assert np.max(np.abs(got - want)) > 1e-3  # the border differs

    def test_a_merge_that_costs_more_is_declined(self):
        inputs = keras.Input((8, 8, 16))
        h = layers.Conv2D(2, 1)(inputs)  # a bottleneck: merged 3x3 16->16
        model = randomize(keras.Model(inputs, layers.Conv2D(16, 3)(h)))
        _, removed, journal = self.merge(model)
        assert removed == 0
        assert journal.skipped[0].detail == "merging would cost more"

    def test_a_run_stops_at_an_activation_and_at_a_branch(self):
        inputs = keras.Input((4,))
        a = layers.Dense(4, "relu", name="a")(inputs)
        b = layers.Dense(4, name="b")(a)
        c = layers.Dense(4, name="c")(b)
        d = layers.Dense(4, name="d")(c)
        model = keras.Model(inputs, [d, layers.Dense(2, name="e")(c)])
        runs = find_runs(Graph.from_model(model))
        assert [[n.layer.name for n in run] for run in runs] == [["b", "c"]]


class TestCompose(TestCase):
    def test_a_depthwise_kernel_composes_as_its_dense_form(self):
        inputs = keras.Input((5, 5, 2))
        model = randomize(
            keras.Model(inputs, layers.DepthwiseConv2D(3, depth_multiplier=2)(inputs))
        )
        (node,) = Graph.from_model(model).layer_nodes()
        op = linear_op(node)
        assert op.kernel_shape == (3, 3, 2, 4)
        dw = model.layers[1].get_weights()[0]
        x = self.random_inputs((1, 5, 5, 2))
        self.assert_close(
            numpy_conv.conv(x, op.kernel),
            numpy_conv.conv(x, dw, depthwise=True),
            atol=1e-5,
        )

    def test_weights_are_computed_only_when_read(self):
        calls = []

        def weights():
            calls.append(1)
            return np.ones((1, 1, 2, 2)), np.zeros(2)

        a = LinearOp((1, 1, 2, 2), (1, 1), "valid", weights)
        b = LinearOp.of(np.ones((1, 1, 2, 3)), np.zeros(3), (1, 1), "valid")
        op, reason = compose(a, b, (None, 4, 4, 2), exact=True)
        assert reason is None and op.kernel_shape == (1, 1, 2, 3) and not calls
        self.assert_close(op.kernel, np.full((1, 1, 2, 3), 2.0))
        assert calls == [1]

    def test_ranks_must_agree(self):
        a = LinearOp.of(np.ones((3, 2, 2)), np.zeros(2), (1,), "valid")
        b = LinearOp.of(np.ones((3, 3, 2, 2)), np.zeros(2), (1, 1), "valid")
        assert compose(a, b, (None, 4, 4, 2), exact=True) == (None, "ranks differ")

    def test_unknown_sizes_are_priced_at_the_nominal_size(self):
        assert positions((None, None, 4, 8)) == NOMINAL_SIZE * 4
        assert positions((None, 8)) == 1
