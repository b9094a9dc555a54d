import dataclasses
import math

import keras
import pytest

import keras_collapse as kc
from keras_collapse.report import ModelStats
from keras_collapse.report import model_stats
from tests.testing import TestCase


def conv_bn_head():
    """conv3x3(16->32, relu) -> BN -> ReLU -> conv1x1(32->8) -> GAP -> dense."""
    inputs = keras.Input((8, 8, 16))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def residual():
    """stem -> [conv -> relu -> conv] + conv1x1 shortcut -> relu -> conv.

    Five weight layers, but the longest path crosses only four of them.
    """
    inputs = keras.Input((6, 6, 4))
    stem = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    branch = keras.layers.Conv2D(8, 3, padding="same")(stem)
    branch = keras.layers.ReLU()(branch)
    branch = keras.layers.Conv2D(8, 3, padding="same")(branch)
    shortcut = keras.layers.Conv2D(8, 1)(stem)
    x = keras.layers.ReLU()(keras.layers.Add()([branch, shortcut]))
    outputs = keras.layers.Conv2D(2, 1)(x)
    return keras.Model(inputs, outputs)


def shared_dense():
    """The same Dense(4, relu) applied twice in a row."""
    dense = keras.layers.Dense(4, activation="relu")
    inputs = keras.Input((4,))
    return keras.Model(inputs, dense(dense(inputs)))


def nested():
    """An inner conv-relu model called twice by an outer model."""
    inner_in = keras.Input((5, 5, 3))
    inner_out = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(inner_in)
    inner = keras.Model(inner_in, inner_out, name="inner")
    inputs = keras.Input((5, 5, 3))
    x = inner(inner(inputs))
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def sequential():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3),
        ]
    )


def after_dense(apply):
    """Input(4) -> Dense(4) -> apply(...): counts what `apply` adds."""
    inputs = keras.Input((4,))
    return keras.Model(inputs, apply(keras.layers.Dense(4)(inputs)))


def kernel_layer_macs(model):
    """Independent MAC oracle for plain conv/depthwise/dense models: every
    kernel weight once per output position, read from `model.layers`."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            _, height, width, _ = layer.output.shape
            total += int(keras.ops.size(layer.kernel)) * height * width
        elif isinstance(layer, keras.layers.Dense):
            total += int(keras.ops.size(layer.kernel))
    return total


class TestModelStats(TestCase):
    def test_conv_bn_head_counts(self):
        stats = model_stats(conv_bn_head())
        assert stats.depth == 3  # conv, conv, dense; BN and ReLU weigh nothing
        assert stats.activations == 3  # fused relu, ReLU layer, fused softmax
        assert stats.params == (9 * 16 * 32 + 32) + 4 * 32 + (32 * 8 + 8) + (
            8 * 10 + 10
        )
        # conv 3x3 16->32 and 1x1 32->8 at 8x8 positions; BN folds away (0).
        assert stats.macs == 9 * 16 * 32 * 64 + 32 * 8 * 64 + 8 * 10
        assert stats.layers == 6
        assert stats.notes == ()

    def test_depth_is_the_longest_path_not_the_layer_count(self):
        stats = model_stats(residual())
        assert stats.depth == 4  # stem, conv, conv, head (the 1x1 is beside)
        assert stats.activations == 2
        assert stats.macs == 36 * (9 * 4 * 8 + 2 * 9 * 8 * 8 + 8 * 8 + 8 * 2)

    def test_shared_layer_counts_per_call_except_params(self):
        model = shared_dense()
        stats = model_stats(model)
        assert stats.depth == 2
        assert stats.activations == 2
        assert stats.macs == 2 * 4 * 4
        assert stats.layers == 2
        assert stats.params == 4 * 4 + 4 == model.count_params()

    def test_nested_model_is_flattened(self):
        model = nested()
        stats = model_stats(model)
        assert stats.depth == 3
        assert stats.activations == 2
        assert stats.params == (9 * 3 * 3 + 3) + (75 * 2 + 2) == model.count_params()
        assert stats.macs == 2 * 9 * 3 * 3 * 25 + 75 * 2
        assert stats.layers == 4  # conv, conv, flatten, dense

    def test_sequential(self):
        model = sequential()
        stats = model_stats(model)
        assert (stats.depth, stats.activations, stats.layers) == (2, 1, 4)
        assert stats.macs == 6 * 5 + 5 * 3
        assert stats.params == 6 * 5 + 5 + 5 * 3 + 3 == model.count_params()

    @pytest.mark.parametrize(
        "build", [conv_bn_head, residual, nested, sequential, shared_dense]
    )
    def test_params_match_count_params(self, build):
        model = build()
        assert model_stats(model).params == model.count_params()

    def test_mobilenet_v2(self):
        model = keras.applications.MobileNetV2(
            weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10
        )
        stats = model_stats(model)
        assert stats.params == model.count_params()
        # Stem conv, block 0 (depthwise + project), 16 blocks of expand +
        # depthwise + project, the last 1x1 conv and the classifier: 53 deep.
        assert stats.depth == 1 + 2 + 16 * 3 + 1 + 1
        # ReLU6 after the stem, one in block 0, two per later block, one after
        # the last conv, and the classifier's softmax.
        assert stats.activations == 1 + 1 + 16 * 2 + 1 + 1
        assert stats.macs == kernel_layer_macs(model)

    @pytest.mark.large
    def test_mobilenet_v2_macs_match_the_paper(self):
        # Sandler et al. 2018 (arXiv 1801.04381), Table 4: 300M multiply-adds.
        model = keras.applications.MobileNetV2(weights=None)
        assert model_stats(model).macs == pytest.approx(300e6, rel=0.01)

    def test_stats_are_frozen_and_convert_to_a_dict(self):
        stats = model_stats(sequential())
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.depth = 0
        assert stats.as_dict() == {
            "depth": 2,
            "activations": 1,
            "params": 6 * 5 + 5 + 5 * 3 + 3,
            "macs": 6 * 5 + 5 * 3,
            "layers": 4,
            "notes": [],
            "linearized": 0,
        }
        assert isinstance(stats, ModelStats)

    def test_rejects_what_is_not_a_model(self):
        with pytest.raises(ValueError, match="Expected a keras.Model"):
            model_stats(keras.layers.Dense(3))


class TestDepth(TestCase):
    @pytest.mark.parametrize(
        ("layer", "shape", "depth"),
        [
            (lambda: keras.layers.SeparableConv2D(4, 3), (6, 6, 3), 2),
            (lambda: keras.layers.DepthwiseConv2D(3), (6, 6, 3), 1),
            (lambda: keras.layers.Conv2DTranspose(4, 3), (6, 6, 3), 1),
            (lambda: keras.layers.Conv1D(4, 3), (6, 3), 1),
            (lambda: keras.layers.EinsumDense("ab,bc->ac", 4), (3,), 1),
            (lambda: keras.layers.BatchNormalization(), (6, 6, 3), 0),
            (lambda: keras.layers.PReLU(), (6, 3), 0),
            (lambda: keras.layers.MaxPooling2D(), (6, 6, 3), 0),
            (lambda: keras.layers.Embedding(10, 4), (5,), 0),
        ],
    )
    def test_weight_of_each_layer(self, layer, shape, depth):
        inputs = keras.Input(shape)
        assert model_stats(keras.Model(inputs, layer()(inputs))).depth == depth


class TestActivations(TestCase):
    @pytest.mark.parametrize(
        ("make", "count"),
        [
            pytest.param(keras.layers.ReLU, 1, id="ReLU"),
            pytest.param(keras.layers.LeakyReLU, 1, id="LeakyReLU"),
            pytest.param(keras.layers.PReLU, 1, id="PReLU"),
            pytest.param(keras.layers.ELU, 1, id="ELU"),
            pytest.param(keras.layers.Softmax, 1, id="Softmax"),
            pytest.param(lambda: keras.layers.Activation("tanh"), 1, id="tanh"),
            pytest.param(lambda: keras.layers.Activation("linear"), 0, id="linear"),
            pytest.param(lambda: keras.layers.Dense(4, "gelu"), 1, id="fused-gelu"),
            pytest.param(lambda: keras.layers.Dense(4), 0, id="Dense"),
            pytest.param(lambda: keras.layers.Dropout(0.5), 0, id="Dropout"),
            pytest.param(keras.layers.BatchNormalization, 0, id="BN"),
            pytest.param(lambda: keras.ops.relu, 1, id="ops.relu"),
            pytest.param(lambda: keras.ops.silu, 1, id="ops.silu"),
            pytest.param(lambda: keras.ops.softmax, 1, id="ops.softmax"),
            pytest.param(lambda: lambda x: keras.ops.add(x, x), 0, id="ops.add"),
            pytest.param(lambda: kc.CollapsibleActivation("gelu"), 1, id="collapsible"),
        ],
    )
    def test_counts_nonlinear_activations_only(self, make, count):
        assert model_stats(after_dense(make())).activations == count

    @pytest.mark.parametrize(
        ("make_linear", "count"),
        [
            (lambda layer: None, 1),
            (lambda layer: layer.set_alpha(0.5), 1),
            (lambda layer: layer.set_alpha(1.0), 0),
            (lambda layer: layer.lock_linear(), 0),
        ],
        ids=["alpha=0", "alpha=0.5", "alpha=1", "locked"],
    )
    def test_collapsible_counts_until_linear(self, make_linear, count):
        layer = kc.CollapsiblePReLU()
        model = after_dense(layer)
        make_linear(layer)
        stats = model_stats(model)
        assert stats.activations == count
        assert stats.linearized == 1 - count  # the linear one, counted apart

    def test_fused_activations_in_convolutions(self):
        inputs = keras.Input((6, 6, 3))
        x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        x = keras.layers.DepthwiseConv2D(3, activation="relu6")(x)
        x = keras.layers.SeparableConv2D(4, 1, activation="linear")(x)
        assert model_stats(keras.Model(inputs, x)).activations == 2


class TestMacs(TestCase):
    @pytest.mark.parametrize(
        ("layer", "shape", "macs"),
        [
            # 3x3 taps, 16 -> 32 channels, 8x8 output positions.
            pytest.param(
                lambda: keras.layers.Conv2D(32, 3, padding="same"),
                (8, 8, 16),
                9 * 16 * 32 * 64,
                id="conv-same",
            ),
            # "valid", stride 2: 9x9 -> 4x4.
            pytest.param(
                lambda: keras.layers.Conv2D(8, 3, strides=2),
                (9, 9, 4),
                9 * 4 * 8 * 16,
                id="conv-strided",
            ),
            # 2 groups: each output channel sees 4 / 2 = 2 input channels.
            pytest.param(
                lambda: keras.layers.Conv2D(8, 3, groups=2, padding="same"),
                (6, 6, 4),
                9 * 2 * 8 * 36,
                id="conv-grouped",
            ),
            pytest.param(
                lambda: keras.layers.Conv1D(6, 3), (10, 4), 3 * 4 * 6 * 8, id="conv1d"
            ),
            pytest.param(
                lambda: keras.layers.Conv2D(4, 3, data_format="channels_first"),
                (2, 6, 6),
                9 * 2 * 4 * 16,
                id="conv-channels-first",
            ),
            pytest.param(
                lambda: keras.layers.DepthwiseConv2D(
                    3, padding="same", depth_multiplier=2
                ),
                (8, 8, 4),
                9 * 4 * 2 * 64,
                id="depthwise",
            ),
            # depthwise 3x3 then pointwise 4 -> 6, both at the 4x4 output.
            pytest.param(
                lambda: keras.layers.SeparableConv2D(6, 3, strides=2, padding="same"),
                (8, 8, 4),
                9 * 4 * 16 + 4 * 6 * 16,
                id="separable",
            ),
            # Each of the 5x5 input positions scatters the 3x3x4x2 kernel.
            pytest.param(
                lambda: keras.layers.Conv2DTranspose(4, 3, strides=2),
                (5, 5, 2),
                9 * 2 * 4 * 25,
                id="transposed",
            ),
            # 5 positions of 7 features each.
            pytest.param(
                lambda: keras.layers.Dense(3), (5, 7), 5 * 7 * 3, id="dense-sequence"
            ),
            pytest.param(keras.layers.BatchNormalization, (8, 8, 4), 0, id="batchnorm"),
            pytest.param(
                keras.layers.GlobalAveragePooling2D, (8, 8, 4), 0, id="pooling"
            ),
        ],
    )
    def test_layer_macs(self, layer, shape, macs):
        inputs = keras.Input(shape)
        stats = model_stats(keras.Model(inputs, layer()(inputs)))
        assert stats.macs == macs
        assert stats.notes == ()

    def test_layer_without_a_rule_is_noted(self):
        inputs = keras.Input((5, 3))
        x = keras.layers.SimpleRNN(4, name="rnn")(inputs)
        stats = model_stats(keras.Model(inputs, keras.layers.Dense(2)(x)))
        assert stats.macs == 4 * 2
        assert len(stats.notes) == 1 and "'rnn' (SimpleRNN)" in stats.notes[0]

    def test_einsum_dense_is_counted(self):
        # Every output entry sums over the contracted axis: 3 x 4, then 4 x 2.
        inputs = keras.Input((3,))
        x = keras.layers.EinsumDense("ab,bc->ac", 4, name="einsum")(inputs)
        stats = model_stats(keras.Model(inputs, keras.layers.Dense(2)(x)))
        assert stats.macs == 3 * 4 + 4 * 2
        assert stats.notes == ()


def unknown_size_cnn():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = keras.layers.Conv2D(5, 3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def two_sequences():
    first, second = keras.Input((None, 4)), keras.Input((None, 3))
    a = keras.layers.Dense(2)(first)
    b = keras.layers.Dense(2)(second)
    return keras.Model([first, second], [a, b])


class TestUnknownAxes(TestCase):
    @pytest.mark.parametrize(
        "input_shape", [(16, 16, 3), [(16, 16, 3)], (16, 16, None)]
    )
    def test_input_shape_sets_unknown_axes(self, input_shape):
        stats = model_stats(unknown_size_cnn(), input_shape=input_shape)
        # 16x16 -> 8x8 after the stride-2 conv; the second conv stays 8x8.
        assert stats.macs == 9 * 3 * 4 * 64 + 9 * 4 * 5 * 64 + 5 * 2
        assert stats.notes == ()

    def test_unknown_axes_default_to_32_with_a_note(self):
        stats = model_stats(unknown_size_cnn())
        assert stats.macs == 9 * 3 * 4 * 256 + 9 * 4 * 5 * 256 + 5 * 2
        assert len(stats.notes) == 1 and "assumed 32" in stats.notes[0]

    def test_known_axes_are_kept(self):
        inputs = keras.Input((None, 8, 3))
        x = keras.layers.Conv2D(4, 1)(inputs)
        stats = model_stats(keras.Model(inputs, x), input_shape=(2, None, 3))
        assert stats.macs == 3 * 4 * 2 * 8

    def test_input_shape_of_a_fully_known_model_changes_nothing(self):
        model = conv_bn_head()
        assert model_stats(model, input_shape=(8, 8, 16)) == model_stats(model)

    def test_one_shape_per_input(self):
        stats = model_stats(two_sequences(), input_shape=[(5, 4), (7, 3)])
        assert stats.macs == 5 * 4 * 2 + 7 * 3 * 2

    @pytest.mark.parametrize(
        ("input_shape", "match"),
        [
            ((16, 16), "does not fit the model input"),
            ((16, 16, 4), "does not fit the model input"),
            ((16, -1, 3), "must be a shape without the batch axis"),
            ("16x16", "must be a shape without the batch axis"),
            ([(16, 16, 3), (8, 8, 3)], "has 1 inputs"),
        ],
    )
    def test_rejects_bad_input_shape(self, input_shape, match):
        with pytest.raises(ValueError, match=match):
            model_stats(unknown_size_cnn(), input_shape=input_shape)

    def test_multi_input_needs_a_list(self):
        with pytest.raises(ValueError, match="has 2 inputs"):
            model_stats(two_sequences(), input_shape=(5, 4))

    def test_every_input_with_unknown_axes_in_one_note(self):
        # BERT-like: three token inputs of unknown length were three notes,
        # six in a surgery report (before and after).
        stats = model_stats(two_sequences())
        assert len(stats.notes) == 1, stats.notes
        (note,) = stats.notes
        assert note.startswith("2 inputs with unknown axes, assumed 32 each")
        assert "-> (None, 32, 4)" in note and "-> (None, 32, 3)" in note


class TestCollapsibleParams(TestCase):
    def test_slopes_and_locks_are_counted_and_said(self):
        plain = sequential()
        converted = kc.make_collapsible(plain)
        stats = model_stats(converted)
        own = sum(
            math.prod(w.shape)
            for layer in kc.collapsible_layers(converted)
            for w in layer.weights
        )
        assert own > 0
        assert stats.params == plain.count_params() + own == converted.count_params()
        (note,) = stats.notes
        assert f"Parameters include {own:,} slope and lock value(s)" in note
        assert model_stats(plain).notes == ()
