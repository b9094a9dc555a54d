"""`surgery` on hand-built graphs: each merge, fold and rule, with the input
model's outputs as the oracle."""

import importlib

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.layers.bias_map import is_bias_map
from tests.testing import TestCase


def randomize_bn(layer, seed):
    rng = np.random.default_rng(seed)
    weights = []
    for w, var in zip(layer.get_weights(), layer.weights):
        kind = var.path.split("/")[-1]
        if kind in ("gamma", "moving_variance"):
            weights.append(rng.uniform(0.5, 1.5, w.shape))
        else:
            weights.append(rng.normal(0.0, 0.3, w.shape))
    layer.set_weights(weights)


def bn(x, seed=0, **kwargs):
    layer = keras.layers.BatchNormalization(**kwargs)
    y = layer(x)
    randomize_bn(layer, seed)
    return y


def locked(x, activation="relu"):
    layer = kc.CollapsibleActivation(activation, alpha_regularizer=None)
    y = layer(x)
    layer.lock_linear()
    return y


def inverted_residual(x, expand, seed, lock=True):
    channels = x.shape[-1]
    h = keras.layers.Conv2D(expand, 1, use_bias=False)(x)
    h = bn(h, seed)
    h = locked(h, "relu6") if lock else keras.layers.ReLU(6.0)(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
    h = bn(h, seed + 1)
    h = locked(h, "relu6") if lock else keras.layers.ReLU(6.0)(h)
    h = keras.layers.Conv2D(channels, 1, use_bias=False)(h)
    h = bn(h, seed + 2)
    return keras.layers.Add()([x, h])


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


class SurgeryTestCase(TestCase):
    def collapse(self, model, x, atol=1e-5, **kwargs):
        """Runs surgery and checks the result against the input model."""
        before = weights_of(model)
        small, report = kc.surgery(model, return_report=True, **kwargs)
        for w0, w1 in zip(before, model.get_weights()):
            np.testing.assert_array_equal(w0, w1)  # input model untouched
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        got = keras.ops.convert_to_numpy(small(x, training=False))
        scale = np.max(np.abs(expected))
        assert np.max(np.abs(got - expected)) <= atol * scale, report
        assert report.after.depth <= report.before.depth
        return small, report


class TestMerges(SurgeryTestCase):
    def test_dense_chain_with_dropout_and_bn(self):
        inputs = keras.Input((10,))
        h = keras.layers.Dense(32)(inputs)
        h = keras.layers.Dropout(0.5)(h)
        h = bn(h)
        h = locked(h, "gelu")
        h = keras.layers.Dense(6)(h)
        outputs = keras.layers.Dense(3, activation="softmax")(h)
        model = keras.Model(inputs, outputs)
        small, report = self.collapse(model, self.random_inputs((8, 10)))
        assert [type(layer).__name__ for layer in small.layers] == [
            "InputLayer",
            "Dense",
        ]
        assert report.before.depth == 3 and report.after.depth == 1
        assert report.count("merge") == 1 and report.count("fold_bn") == 1

    def test_mobilenet_block_collapses_to_one_conv_and_a_plain_bias_map(self):
        inputs = keras.Input((8, 8, 16))
        model = keras.Model(inputs, inverted_residual(inputs, 96, seed=1))
        small, report = self.collapse(
            model, self.random_inputs((2, 8, 8, 16), scale=2.0)
        )
        kinds = [type(layer).__name__ for layer in small.layers]
        # The border-aware bias is a plain Rescaling(1, offset=map).
        assert kinds == ["InputLayer", "Conv2D", "Rescaling"]
        assert is_bias_map(small.layers[2])
        assert np.shape(small.layers[2].offset) == (8, 8, 16)
        assert small.layers[1].kernel.shape == (3, 3, 16, 16)
        assert report.after.macs < report.before.macs
        assert report.count("absorb_residual") == 1

    def test_unlocked_block_is_only_folded(self):
        inputs = keras.Input((8, 8, 16))
        model = keras.Model(inputs, inverted_residual(inputs, 96, seed=1, lock=False))
        small, report = self.collapse(model, self.random_inputs((2, 8, 8, 16)))
        assert report.count("merge") == 0 and report.count("fold_bn") == 3
        assert report.after.activations == report.before.activations == 2

    def test_expensive_merge_is_declined(self):
        # 1x1 16->24 then depthwise: a dense 3x3 16->24 would cost 3x more.
        inputs = keras.Input((8, 8, 16))
        h = keras.layers.Conv2D(24, 1)(inputs)
        h = keras.layers.DepthwiseConv2D(3, padding="same")(h)
        model = keras.Model(inputs, keras.layers.ReLU()(h))
        small, report = self.collapse(model, self.random_inputs((2, 8, 8, 16)))
        assert report.count("merge") == 0
        assert any("cost more" in e.detail for e in report.skipped)

    @pytest.mark.parametrize("rank", [1, 2])
    def test_valid_conv_chain_with_strides(self, rank):
        conv = keras.layers.Conv1D if rank == 1 else keras.layers.Conv2D
        shape = (17,) * rank + (2,)
        inputs = keras.Input(shape)
        h = conv(16, 3, strides=2, padding="valid")(inputs)
        h = conv(2, 2, padding="valid")(h)
        model = keras.Model(inputs, h)
        small, report = self.collapse(model, self.random_inputs((2, *shape)))
        assert report.count("merge") == 1
        merged = small.layers[1]
        assert tuple(merged.kernel_size) == (5,) * rank  # 3 + (2 - 1) * 2
        assert tuple(merged.strides) == (2,) * rank

    def test_same_conv_chain_needs_inexact_mode(self):
        # 3x3 4->64 then 3x3 64->4: a 5x5 4->4 is far cheaper, but exact only
        # away from the border.
        inputs = keras.Input((10, 10, 4))
        h = keras.layers.Conv2D(64, 3, padding="same")(inputs)
        h = keras.layers.Conv2D(4, 3, padding="same")(h)
        model = keras.Model(inputs, h)
        x = self.random_inputs((2, 10, 10, 4))
        _, exact_report = self.collapse(model, x)
        assert exact_report.count("merge") == 0
        assert any("border" in e.detail for e in exact_report.skipped)
        small, report = kc.surgery(model, exact=False, return_report=True)
        assert report.count("merge") == 1 and report.deviation > 1e-3
        got = keras.ops.convert_to_numpy(small(x))
        want = keras.ops.convert_to_numpy(model(x))
        # Interior (2 pixels from the border) is exact.
        np.testing.assert_allclose(got[:, 2:-2, 2:-2], want[:, 2:-2, 2:-2], atol=1e-4)

    def test_identity_and_pointwise_residuals_absorbed(self):
        inputs = keras.Input((6, 6, 8))
        branch = keras.layers.Conv2D(8, 3, padding="same")(inputs)
        a = keras.layers.Add()([inputs, branch])
        branch2 = keras.layers.Conv2D(8, 3, padding="same")(a)
        shortcut = keras.layers.Conv2D(8, 1)(a)
        b = keras.layers.Add()([shortcut, branch2])
        model = keras.Model(inputs, keras.layers.ReLU()(b))
        small, report = self.collapse(model, self.random_inputs((2, 6, 6, 8)))
        assert report.count("absorb_residual") == 2
        assert not any(isinstance(layer, keras.layers.Add) for layer in small.layers)

    def test_strided_residual_not_absorbed(self):
        inputs = keras.Input((8, 8, 4))
        branch = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
        shortcut = keras.layers.Conv2D(4, 1, strides=2)(inputs)
        model = keras.Model(inputs, keras.layers.Add()([branch, shortcut]))
        _, report = self.collapse(model, self.random_inputs((2, 8, 8, 4)))
        assert report.count("absorb_residual") == 0


class TestActivations(SurgeryTestCase):
    def test_plain_layers_replace_collapsible_ones(self, tmp_path):
        inputs = keras.Input((6,))
        h = keras.layers.Dense(6)(inputs)
        h = kc.CollapsiblePReLU(name="at_zero")(h)
        h = keras.layers.Dense(6)(h)
        prelu = kc.CollapsiblePReLU(name="at_third")
        h = prelu(h)
        h = keras.layers.Dense(6)(h)
        h = kc.CollapsibleActivation(
            "relu", activation_kwargs={"max_value": 6.0}, name="relu6"
        )(h)
        h = keras.layers.Dense(6)(h)
        gelu = kc.CollapsibleActivation("gelu", name="gelu_blend")
        h = gelu(h)
        model = keras.Model(inputs, keras.layers.Dense(2)(h))
        prelu.set_alpha(0.3)
        gelu.set_alpha(0.4)
        small, report = self.collapse(model, self.random_inputs((4, 6), scale=3.0))
        assert type(small.get_layer("at_zero")) is keras.layers.ReLU
        assert type(small.get_layer("at_third")) is keras.layers.PReLU
        assert small.get_layer("relu6").max_value == 6.0
        # A partial GELU blend: act(x) + alpha * (x - act(x)) in plain layers.
        assert type(small.get_layer("gelu_blend")) is keras.layers.Add
        assert not any(kc.collapsible_layers(small))
        assert report.after.activations == report.before.activations == 4

    def test_result_loads_without_keras_collapse(self, tmp_path):
        inputs = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(8, 3)(inputs)
        h = bn(h)
        h = kc.CollapsiblePReLU()(h)
        h = keras.layers.Conv2D(8, 1)(h)
        h = locked(h)
        h = keras.layers.Conv2D(4, 1)(h)
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
        small = kc.surgery(model)
        x = self.random_inputs((2, 8, 8, 3))
        expected = keras.ops.convert_to_numpy(small(x))
        self.assert_loads_without_keras_collapse(tmp_path, [(small, x, expected)], 1e-6)


class TestGraphs(SurgeryTestCase):
    def test_sequential_nested_multi_io_shared(self):
        block = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(8),
                keras.layers.BatchNormalization(),
            ]
        )
        randomize_bn(block.layers[-1], 3)
        a, b = keras.Input((8,), name="a"), keras.Input((8,), name="b")
        shared = keras.layers.Dense(8)
        h = locked(block(shared(a))) + shared(b)
        out1 = keras.layers.Dense(2, name="out1")(h)
        out2 = keras.layers.Dense(3, name="out2")(locked(keras.layers.Dense(5)(h)))
        model = keras.Model([a, b], [out1, out2])
        x = [self.random_inputs((3, 8)), self.random_inputs((3, 8), seed=1)]
        small, report = kc.surgery(model, return_report=True)
        for want, got in zip(model(x), small(x)):
            self.assert_close(got, want, atol=1e-5)
        assert report.count("fold_bn") == 1 and report.count("merge") >= 1

    def test_custom_layer_passes_through(self):
        @keras.saving.register_keras_serializable(package="tests")
        class Scale(keras.layers.Layer):
            def build(self, shape):
                self.s = self.add_weight(shape=(shape[-1],), initializer="ones")

            def call(self, x):
                return x * self.s

        inputs = keras.Input((4,))
        scale = Scale()
        model = keras.Model(
            inputs, keras.layers.Dense(2)(scale(keras.layers.Dense(4)(inputs)))
        )
        scale.s.assign(np.arange(1, 5, dtype="float32"))
        small, _ = self.collapse(model, self.random_inputs((3, 4)))
        assert any(type(layer).__name__ == "Scale" for layer in small.layers)

    def test_tlc_off_channels_are_cut(self):
        inputs = keras.Input((6, 6, 3))
        h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
        norm = keras.layers.BatchNormalization()
        h = norm(h)
        h = keras.layers.ReLU()(h)
        model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Conv2D(4, 1)(h)))
        randomize_bn(norm, 0)
        gamma, beta, mean, var = norm.get_weights()
        gamma[[1, 5]] = 0.0
        beta[[1, 5]] = 0.0
        norm.set_weights([gamma, beta, mean, var])
        small, report = self.collapse(model, self.random_inputs((2, 6, 6, 3)))
        assert small.layers[1].filters == 6
        assert report.after.params < report.before.params


class TestBadInput(SurgeryTestCase):
    def test_non_finite_bn_statistics_are_reported(self):
        inputs = keras.Input((4,))
        h = keras.layers.Dense(4)(inputs)
        norm = keras.layers.BatchNormalization()
        model = keras.Model(inputs, keras.layers.Dense(2)(norm(h)))
        gamma, beta, mean, var = norm.get_weights()
        var[0] = np.nan
        norm.set_weights([gamma, beta, mean, var])
        small, report = kc.surgery(model, return_report=True)
        assert report.count("fold_bn") == 0
        assert any("finite" in e.detail for e in report.skipped)

    def test_zero_variance_and_zero_gamma(self):
        inputs = keras.Input((4,))
        h = keras.layers.Dense(4)(inputs)
        norm = keras.layers.BatchNormalization()
        model = keras.Model(inputs, keras.layers.Dense(2)(norm(h)))
        gamma, beta, mean, var = norm.get_weights()
        gamma[0], var[1] = 0.0, 0.0
        norm.set_weights([gamma, beta, mean, var])
        _, report = self.collapse(model, self.random_inputs((3, 4)))
        assert report.count("fold_bn") == 1

    def test_verification_failure_raises(self, monkeypatch):
        # The package exports the function `surgery` over its module's name.
        surgery_module = importlib.import_module("keras_collapse.surgery.entry")

        def corrupt(graph, journal):
            for node in graph.layer_nodes():
                if isinstance(node.layer, keras.layers.Dense):
                    node.weights = [w * 1.01 for w in node.layer.get_weights()]
                    node.layer = keras.layers.Dense.from_config(node.layer.get_config())
                    return 1

        monkeypatch.setattr(surgery_module, "restore_plain_activations", corrupt)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        with pytest.raises(kc.VerificationError, match="differs from model"):
            kc.surgery(model)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"tolerance": 0}, "`tolerance` must be a number > 0"),
            ({"tolerance": True}, r"Received: tolerance=True"),
            ({"tolerance": "1e-5"}, "`tolerance` must be"),
            ({"tolerance": float("nan")}, "`tolerance` must be"),
            ({"cost_model": "macs"}, "cost_model"),
            ({"exact": "yes"}, "`exact` must be True or False"),
            ({"verify": 1}, "`verify` must be True or False"),
            ({"merge": None}, "`merge` must be True or False"),
            ({"cut_dead_channels": 0}, "`cut_dead_channels` must be True or False"),
            ({"return_report": "no"}, "`return_report` must be True or False"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        with pytest.raises(ValueError, match=match):
            kc.surgery(model, **kwargs)

    def test_refuses_what_is_not_a_model(self):
        with pytest.raises(ValueError, match="`model` must be a keras.Model"):
            kc.surgery(keras.layers.Dense(2))


class TestNonFinite(SurgeryTestCase):
    def test_nan_weights_are_left_alone_and_reported(self):
        inputs = keras.Input((4,))
        first = keras.layers.Dense(4)
        h = first(inputs)
        model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(3)(h)))
        kernel, bias = first.get_weights()
        kernel[0, 0] = np.nan
        first.set_weights([kernel, bias])
        small, report = kc.surgery(model, return_report=True)
        assert any(e.kind == "non_finite" for e in report.skipped)
        # The two finite Dense layers after it still merge.
        assert report.count("merge") == 1 and len(small.layers) == 3
        x = self.random_inputs((3, 4))
        x[:, 0] = 0.0  # NaN * 0 is NaN: compare where the original is finite
        want = keras.ops.convert_to_numpy(model(x))
        got = keras.ops.convert_to_numpy(small(x))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
