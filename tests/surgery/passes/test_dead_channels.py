"""Cutting exactly-zero channels: widths shrink, outputs do not change."""

import functools

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.graph import Graph
from keras_collapse.graph import rewrite
from keras_collapse.layers import CollapsibleActivation
from keras_collapse.surgery.passes.dead_channels import remove_dead_channels
from keras_collapse.surgery.passes.journal import Journal
from tests.testing import TestCase

L = keras.layers
# `randomize` sets the weights: zero initializers keep the models fast to
# build (JAX compiles a random initializer for every new shape).
Dense = functools.partial(L.Dense, kernel_initializer="zeros")
Conv1D = functools.partial(L.Conv1D, kernel_initializer="zeros")
Conv2D = functools.partial(L.Conv2D, kernel_initializer="zeros")
DepthwiseConv2D = functools.partial(L.DepthwiseConv2D, depthwise_initializer="zeros")
RANDOMIZED = (L.Dense, L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.PReLU)


def randomize(model, seed=0):
    """Random weights everywhere (Keras' zero biases would look dead)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer) in RANDOMIZED:
            layer.set_weights(
                [rng.uniform(-1.0, 1.0, w.shape) for w in layer.get_weights()]
            )
        elif isinstance(layer, CollapsibleActivation):
            layer.set_alpha(rng.uniform(0.0, 1.0, layer.alpha.shape))
        elif type(layer) is L.BatchNormalization:
            layer.set_weights(
                [rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()]
            )


def kill(layer, channels, bias=0.0):
    """Zeroes the kernel slices of output `channels` and sets their bias
    (a depthwise's outputs are numbered input channel * multiplier + j)."""
    kernel, *rest = layer.get_weights()
    flat = kernel.reshape(
        kernel.shape[: -2 if type(layer) is L.DepthwiseConv2D else -1] + (-1,)
    )
    flat = flat.copy()
    flat[..., list(channels)] = 0.0
    if rest:
        rest[0][list(channels)] = bias
    layer.set_weights([flat.reshape(kernel.shape), *rest])


def dense_chain(between, first_activation=None):
    x = keras.Input((6,))
    h = Dense(8, activation=first_activation, name="first")(x)
    h = between(h)
    y = Dense(4, name="second")(h)
    model = keras.Model(x, y)
    randomize(model)
    return model


# Channel-wise layers between the two Dense that keep a zero channel zero.
ZERO_KEEPING = {
    "relu": lambda h: L.ReLU()(h),
    "relu6": lambda h: L.ReLU(max_value=6.0)(h),
    "gelu": lambda h: L.Activation("gelu")(h),
    "leaky_relu": lambda h: L.LeakyReLU(0.1)(h),
    "elu": lambda h: L.ELU()(h),
    "prelu_per_unit": lambda h: L.PReLU(name="prelu")(h),
    "dropout": lambda h: L.Dropout(0.5)(h),
    "relu_then_dropout": lambda h: L.Dropout(0.2)(L.ReLU()(h)),
    "collapsible_silu": lambda h: CollapsibleActivation(
        "silu",
        alpha_initializer=keras.initializers.Constant(0.3),
        alpha_regularizer=None,
    )(h),
    "collapsible_per_unit": lambda h: CollapsibleActivation(
        "gelu",
        alpha_regularizer=None,
        shared_axes=None,
        name="collapsible",
    )(h),
    "raw_relu_op": lambda h: keras.ops.relu(h),
}

# ... and those where the channel must stay (reason expected in the journal).
CHANNEL_KEEPING = {
    "sigmoid": (lambda h: L.Activation("sigmoid")(h), "not exactly zero"),
    "relu_threshold": (
        lambda h: L.ReLU(negative_slope=0.1, threshold=1.0)(h),
        "not exactly zero",
    ),
    "collapsible_sigmoid": (
        lambda h: CollapsibleActivation(
            "sigmoid",
            alpha_initializer=keras.initializers.Constant(0.3),
            alpha_regularizer=None,
        )(h),
        "not exactly zero",
    ),
    "raw_sigmoid_op": (lambda h: keras.ops.sigmoid(h), "not exactly zero"),
    "softmax": (lambda h: L.Activation("softmax")(h), "read by"),
    "batchnorm": (lambda h: L.BatchNormalization(name="bn")(h), "read by 'bn'"),
    "multiply": (lambda h: L.Multiply()([h, h]), "read by"),
    "reshape": (lambda h: L.Reshape((2, 4))(h)[:, 0], "read by"),
}


class TestDeadChannels(TestCase):
    def cut(self, model):
        """Runs the pass; checks that the input model is left as it was."""
        weights = [w.copy() for w in model.get_weights()]
        configs = [layer.get_config() for layer in model.layers]
        graph = Graph.from_model(model)
        journal = Journal()
        cut = remove_dead_channels(graph, journal)
        result = graph.to_model()
        for before, after in zip(weights, model.get_weights(), strict=True):
            np.testing.assert_array_equal(before, after)
        assert [layer.get_config() for layer in model.layers] == configs
        return cut, result, journal

    def assert_same_outputs(self, model, result, seed=0):
        x = self.random_inputs((5,) + tuple(model.input_shape[1:]), seed, scale=2.0)
        expected = keras.tree.flatten(model(x))
        actual = keras.tree.flatten(result(x))
        for a, e in zip(actual, expected, strict=True):
            self.assert_close(a, e, atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("between", sorted(ZERO_KEEPING))
    def test_dense_chain_cut(self, between):
        model = dense_chain(ZERO_KEEPING[between])
        kill(model.get_layer("first"), [2, 5])
        cut, result, journal = self.cut(model)
        assert cut == 2
        assert result.get_layer("first").units == 6
        assert tuple(result.get_layer("second").kernel.shape) == (6, 4)
        self.assert_same_outputs(model, result)
        (entry,) = journal.done
        assert entry.kind == "cut_channels"
        assert entry.layers == ("first", "second")
        assert entry.detail == "2 of 8 channels"

    @pytest.mark.parametrize(
        "between, name",
        [("prelu_per_unit", "prelu"), ("collapsible_per_unit", "collapsible")],
    )
    def test_per_channel_alpha_is_sliced(self, between, name):
        model = dense_chain(ZERO_KEEPING[between])
        kill(model.get_layer("first"), [0, 7])
        _, result, _ = self.cut(model)
        alpha = keras.ops.convert_to_numpy(result.get_layer(name).alpha)
        original = keras.ops.convert_to_numpy(model.get_layer(name).alpha)
        np.testing.assert_array_equal(alpha, original[1:7])

    @pytest.mark.parametrize("between", sorted(CHANNEL_KEEPING))
    def test_dense_chain_kept(self, between):
        make, reason = CHANNEL_KEEPING[between]
        model = dense_chain(make)
        kill(model.get_layer("first"), [3])
        cut, result, journal = self.cut(model)
        assert cut == 0
        assert result.get_layer("first").units == 8
        self.assert_same_outputs(model, result)
        assert journal.done == []
        (entry,) = journal.skipped
        assert "first" in entry.layers
        assert entry.detail.startswith("zero channels [3] kept")
        assert reason in entry.detail

    def test_fused_sigmoid_keeps_the_channel(self):
        model = dense_chain(lambda h: h, first_activation="sigmoid")
        kill(model.get_layer("first"), [1])
        cut, result, journal = self.cut(model)
        assert cut == 0
        assert result.get_layer("first").units == 8
        self.assert_same_outputs(model, result)
        assert "not exactly zero where 'second'" in journal.skipped[0].detail

    def test_producer_without_bias(self):
        x = keras.Input((6,))
        h = Dense(8, use_bias=False, activation="relu", name="first")(x)
        y = Dense(4, name="second")(h)
        model = keras.Model(x, y)
        randomize(model)
        kill(model.get_layer("first"), [6])
        cut, result, _ = self.cut(model)
        assert cut == 1
        assert result.get_layer("first").units == 7
        self.assert_same_outputs(model, result)

    def test_reads_weights_set_by_an_earlier_pass(self):
        # As after a BatchNorm fold: the node carries a new layer whose
        # weights live in `node.weights`.
        model = dense_chain(ZERO_KEEPING["relu"])
        graph = Graph.from_model(model)
        (node,) = [n for n in graph.nodes.values() if n.layer is model.layers[1]]
        kernel, bias = model.layers[1].get_weights()
        kernel[:, [1, 4]], bias[[1, 4]] = 0.0, 0.0
        rewrite.reconfigure(graph, node, {}, [kernel, bias])
        assert remove_dead_channels(graph, Journal()) == 2
        result = graph.to_model()
        kill(model.get_layer("first"), [1, 4])  # the same model, as reference
        assert result.get_layer("first").units == 6
        self.assert_same_outputs(model, result)

    def test_conv_relu_fused_maxpool_conv(self):
        x = keras.Input((8, 8, 3))
        h = Conv2D(8, 3, padding="same", activation="relu", name="first")(x)
        h = L.MaxPooling2D(2)(h)
        y = Conv2D(4, 3, name="second")(h)
        model = keras.Model(x, y)
        randomize(model)
        kill(model.get_layer("first"), [0, 3, 6])
        cut, result, _ = self.cut(model)
        assert cut == 3
        assert result.get_layer("first").filters == 5
        assert tuple(result.get_layer("second").kernel.shape) == (3, 3, 5, 4)
        self.assert_same_outputs(model, result)

    def test_conv_relu_global_pool_dense(self):
        x = keras.Input((6, 6, 2))
        h = Conv2D(6, 3, name="first")(x)
        h = L.ReLU()(h)
        h = L.GlobalAveragePooling2D()(h)
        y = Dense(3, name="second")(h)
        model = keras.Model(x, y)
        randomize(model)
        kill(model.get_layer("first"), [1, 2])
        cut, result, _ = self.cut(model)
        assert cut == 2
        assert result.get_layer("first").filters == 4
        assert tuple(result.get_layer("second").kernel.shape) == (4, 3)
        self.assert_same_outputs(model, result)

    def test_conv1d_through_pooling_and_padding(self):
        x = keras.Input((12, 3))
        h = Conv1D(5, 3, padding="causal", activation="gelu", name="first")(x)
        h = L.AveragePooling1D(2)(h)
        h = L.ZeroPadding1D(1)(h)
        y = Conv1D(2, 3, name="second")(h)
        model = keras.Model(x, y)
        randomize(model)
        kill(model.get_layer("first"), [4])
        cut, result, _ = self.cut(model)
        assert cut == 1
        assert result.get_layer("first").filters == 4
        self.assert_same_outputs(model, result)

    MERGES = {
        "add": lambda a, b: L.Add()([a, b]),
        "raw_add": lambda a, b: a + b,
        "subtract": lambda a, b: L.Subtract()([a, b]),
        "maximum": lambda a, b: L.Maximum()([a, b]),
    }

    @staticmethod
    def residual(merge):
        x = keras.Input((8, 8, 4))
        a = Conv2D(6, 3, padding="same", name="branch")(x)
        a = L.ReLU()(a)
        b = Conv2D(6, 1, name="shortcut")(x)
        h = TestDeadChannels.MERGES[merge](a, b)
        h = L.ReLU()(h)
        y = Conv2D(3, 3, name="head")(h)
        model = keras.Model(x, y)
        randomize(model)
        return model

    @pytest.mark.parametrize("merge", sorted(MERGES))
    def test_residual_dead_in_both_branches_is_cut(self, merge):
        model = self.residual(merge)
        kill(model.get_layer("branch"), [1, 4])
        kill(model.get_layer("shortcut"), [1, 4])
        cut, result, journal = self.cut(model)
        assert cut == 2  # two channels of one group, cut from both branches
        assert result.get_layer("branch").filters == 4
        assert result.get_layer("shortcut").filters == 4
        assert tuple(result.get_layer("head").kernel.shape) == (3, 3, 4, 3)
        self.assert_same_outputs(model, result)
        (entry,) = journal.done
        assert set(entry.layers) == {"branch", "shortcut", "head"}

    @pytest.mark.parametrize("merge", sorted(MERGES))
    def test_residual_dead_in_one_branch_is_kept(self, merge):
        model = self.residual(merge)
        kill(model.get_layer("branch"), [1, 4])
        kill(model.get_layer("shortcut"), [4])
        cut, result, journal = self.cut(model)
        assert cut == 1  # only channel 4 is dead in both
        assert result.get_layer("branch").filters == 5
        self.assert_same_outputs(model, result)
        (entry,) = journal.skipped
        assert entry.detail.startswith("zero channels [1] kept")
        assert "where 'head' reads them" in entry.detail

    def test_channel_reaching_a_model_output_is_kept(self):
        x = keras.Input((5,))
        h = Dense(6, activation="relu", name="first")(x)
        y = Dense(2, name="second")(h)
        model = keras.Model(x, [h, y])
        randomize(model)
        kill(model.get_layer("first"), [0])
        cut, result, journal = self.cut(model)
        assert cut == 0
        assert result.get_layer("first").units == 6
        self.assert_same_outputs(model, result)
        assert "reaches a model output" in journal.skipped[0].detail

    def test_dead_channel_before_flatten_is_kept(self):
        x = keras.Input((4, 4, 2))
        h = Conv2D(3, 3, padding="same", activation="relu", name="first")(x)
        h = L.Flatten(name="flatten")(h)
        y = Dense(2)(h)
        model = keras.Model(x, y)
        randomize(model)
        kill(model.get_layer("first"), [2])
        cut, result, journal = self.cut(model)
        assert cut == 0
        assert result.get_layer("first").filters == 3
        self.assert_same_outputs(model, result)
        assert "read by 'flatten' (Flatten)" in journal.skipped[0].detail

    @staticmethod
    def depthwise_block(activation=None):
        x = keras.Input((7, 7, 3))
        h = Conv2D(6, 1, activation=activation, name="first")(x)
        h = L.ReLU()(h)
        h = DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(h)
        y = Conv2D(4, 1, name="last")(h)
        model = keras.Model(x, y)
        randomize(model)
        return model

    def test_depthwise_consumer_with_zero_bias(self):
        model = self.depthwise_block()
        kill(model.get_layer("first"), [2])
        dw = model.get_layer("dw")
        kernel, bias = dw.get_weights()
        bias[[4, 5]] = 0.0  # the outputs of input channel 2
        dw.set_weights([kernel, bias])
        cut, result, _ = self.cut(model)
        assert cut == 3  # channel 2 of `first`, outputs 4 and 5 of `dw`
        assert result.get_layer("first").filters == 5
        assert tuple(result.get_layer("dw").kernel.shape) == (3, 3, 5, 2)
        assert tuple(result.get_layer("last").kernel.shape) == (1, 1, 10, 4)
        self.assert_same_outputs(model, result)

    def test_depthwise_consumer_with_bias_keeps_the_channel(self):
        model = self.depthwise_block()
        kill(model.get_layer("first"), [2])
        dw = model.get_layer("dw")
        kernel, bias = dw.get_weights()
        bias[4] = 0.0
        bias[5] = 0.25  # output 5 is the constant 0.25: still read by `last`
        dw.set_weights([kernel, bias])
        cut, result, journal = self.cut(model)
        assert cut == 0
        assert result.get_layer("first").filters == 6
        self.assert_same_outputs(model, result)
        assert "tied through 'dw'" in journal.skipped[0].detail

    @pytest.mark.parametrize(
        "activation, freed",
        [(None, True), ("elu", True), ("softmax", False), (keras.ops.tanh, False)],
    )
    def test_dead_depthwise_outputs_free_their_input_channel(self, activation, freed):
        # Channel 1 of `first` is alive, but only `dw` reads it, and both
        # outputs `dw` makes of it are zero: it is unused, unless `first`'s
        # activation mixes channels (softmax) or is not a Keras activation.
        model = self.depthwise_block(activation)
        kill(model.get_layer("dw"), [2, 3])
        cut, result, _ = self.cut(model)
        assert cut == (3 if freed else 0)
        assert result.get_layer("first").filters == (5 if freed else 6)
        inputs = result.get_layer("last").kernel.shape[2]
        assert inputs == (10 if freed else 12)
        self.assert_same_outputs(model, result)

    def test_no_dead_channel_changes_nothing(self):
        x = keras.Input((6, 6, 3))
        h = Conv2D(4, 3, activation="relu", name="first")(x)
        y = Conv2D(2, 3, name="second")(h)
        model = keras.Model(x, y)
        randomize(model)
        cut, result, journal = self.cut(model)
        assert cut == 0
        assert result.get_layer("first").filters == 4
        assert journal.done == [] and journal.skipped == []
        self.assert_same_outputs(model, result)

    def test_every_channel_dead_keeps_one(self):
        model = dense_chain(ZERO_KEEPING["relu"])
        kill(model.get_layer("first"), range(8))
        cut, result, journal = self.cut(model)
        assert cut == 7
        assert result.get_layer("first").units == 1
        self.assert_same_outputs(model, result)
        assert "every channel could go" in journal.skipped[0].detail

    def test_shared_reader_is_not_cut(self):
        x1, x2 = keras.Input((5,)), keras.Input((5,))
        h1 = Dense(4, name="first")(x1)
        h2 = Dense(4, name="other")(x2)
        shared = Dense(3, name="shared")
        model = keras.Model([x1, x2], [shared(h1), shared(h2)])
        randomize(model)
        kill(model.get_layer("first"), [1])
        cut, result, journal = self.cut(model)
        assert cut == 0
        assert "'shared' is shared" in journal.skipped[0].detail
        x = [self.random_inputs((3, 5), s) for s in (1, 2)]
        for a, e in zip(result(x), model(x), strict=True):
            self.assert_close(a, e, atol=1e-5, rtol=1e-5)

    @staticmethod
    def residual_net():
        """A small residual conv net for the random test."""
        x = keras.Input((8, 8, 3))
        a = Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
        b = Conv2D(8, 3, padding="same", name="c2")(a)
        b = L.ReLU()(b)
        s = Conv2D(8, 1, name="c3")(a)
        h = L.Add()([b, s])
        h = L.MaxPooling2D(2)(h)
        d = DepthwiseConv2D(3, padding="same", name="dw")(h)
        d = L.ReLU()(d)
        e = Conv2D(6, 1, name="c4")(d)
        g = L.GlobalAveragePooling2D()(e)
        y = Dense(3, name="out")(g)
        model = keras.Model(x, y)
        randomize(model)
        return model

    @pytest.mark.parametrize("seed", range(6))
    def test_random_dead_channels(self, seed):
        """The expected cut follows from the rules, worked out per layer."""
        rng = np.random.default_rng(seed)

        def pick(n, most):
            return set(rng.choice(n, rng.integers(0, most + 1), replace=False).tolist())

        model = self.residual_net()
        k1, k2, k3, kd, k4 = pick(8, 4), pick(8, 4), pick(8, 4), pick(8, 3), pick(6, 4)
        for name, channels in [("c1", k1), ("c2", k2), ("c3", k3), ("c4", k4)]:
            kill(model.get_layer(name), channels)
        dw = model.get_layer("dw")
        kill(dw, kd, bias=0.5)  # zero kernel, constant output ...
        kernel, bias = dw.get_weights()  # ... unless its bias is zeroed here
        bias[rng.random(8) < 0.5] = 0.0
        dw.set_weights([kernel, bias])
        # dw's output c is zero iff its bias is zero and its kernel or its
        # input (dead in both c2 and c3) is; the residual group's channel c
        # is read only by dw, so it goes with that output.
        gone = {c for c in range(8) if bias[c] == 0 and (c in kd or c in k2 & k3)}
        cut, result, _ = self.cut(model)
        assert cut == len(k1) + 2 * len(gone) + len(k4)
        assert result.get_layer("c1").filters == 8 - len(k1)
        assert result.get_layer("c2").filters == 8 - len(gone)
        assert result.get_layer("c3").filters == 8 - len(gone)
        assert result.get_layer("c4").filters == 6 - len(k4)
        self.assert_same_outputs(model, result, seed)


class TestDeadChannelsThroughSurgery(TestCase):
    """The whole surgery, not the pass alone: later passes read the sliced
    activation's state (a collapsible's alpha), so it must be built."""

    @pytest.mark.parametrize(
        "activation",
        [
            lambda: CollapsibleActivation("relu", shared_axes=[1, 2]),
            lambda: CollapsibleActivation("gelu", shared_axes=None),
            lambda: L.PReLU(shared_axes=[1, 2]),
            lambda: L.PReLU(),
        ],
        ids=[
            "collapsible_per_channel",
            "collapsible_per_position",
            "prelu",
            "prelu_full",
        ],
    )
    def test_zero_channel_cut_through_a_per_channel_activation(self, activation):
        x = keras.Input((6, 6, 3))
        norm = L.BatchNormalization()
        act = activation()
        h = act(norm(Conv2D(4, 3)(x)))
        model = keras.Model(x, Conv2D(2, 3)(h))
        randomize(model, seed=2)
        if isinstance(act, L.PReLU):
            act.set_weights([np.full(w.shape, 0.3) for w in act.get_weights()])
        gamma, beta, mean, var = norm.get_weights()
        gamma[1] = beta[1] = 0.0
        norm.set_weights([gamma, beta, mean, var])
        small, report = kc.surgery(model, return_report=True)
        assert report.count("cut_channels") == 1
        assert small.layers[1].filters == 3
        data = self.random_inputs((3, 6, 6, 3), scale=2.0)
        self.assert_close(small(data), model(data), atol=1e-5, rtol=1e-5)
