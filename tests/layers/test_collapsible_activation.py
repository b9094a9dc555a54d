import math

import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.testing import TestCase

_erf = np.vectorize(math.erf)

# Independent NumPy oracles of the activations being blended.
ORACLES = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
    "tanh": np.tanh,
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
}


def blend_oracle(act, x, alpha):
    return alpha * x + (1.0 - alpha) * ORACLES[act](x)


class TestCollapsibleActivation(TestCase):
    @pytest.mark.parametrize("act", sorted(ORACLES))
    @pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 1.7, -0.5])
    def test_matches_numpy_blend(self, act, alpha):
        x = self.random_inputs((4, 7), scale=4.0)
        x[0, :3] = [0.0, 6.0, -6.0]  # the kinks of relu/relu6
        layer = kc.CollapsibleActivation(
            act,
            alpha_initializer=keras.initializers.Constant(alpha),
            alpha_regularizer=None,
        )
        self.assert_close(
            layer(x),
            blend_oracle(act, x.astype("float64"), alpha),
            atol=2e-6,
            rtol=2e-6,
        )

    @pytest.mark.parametrize("act", sorted(ORACLES))
    def test_alpha_zero_is_the_activation_exactly(self, act):
        x = self.random_inputs((3, 9), scale=3.0)
        layer = kc.CollapsibleActivation(act, alpha_regularizer=None)
        expected = keras.activations.get(act)(keras.ops.convert_to_tensor(x))
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(layer(x)), keras.ops.convert_to_numpy(expected)
        )

    def test_relu_blend_is_prelu_exactly(self):
        x = self.random_inputs((5, 6), scale=3.0)
        for alpha in [0.0, 0.25, 1.0]:
            layer = kc.CollapsibleActivation(
                "relu",
                alpha_initializer=keras.initializers.Constant(alpha),
                alpha_regularizer=None,
            )
            prelu = keras.layers.PReLU(
                alpha_initializer=keras.initializers.Constant(alpha)
            )
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(layer(x)),
                keras.ops.convert_to_numpy(prelu(x)),
            )
        # alpha = 1 is exactly the identity for relu.
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)

    def test_activation_kwargs(self):
        x = self.random_inputs((4, 5), scale=10.0)
        layer = kc.CollapsibleActivation(
            "relu", activation_kwargs={"max_value": 6.0}, alpha_regularizer=None
        )
        self.assert_close(layer(x), ORACLES["relu6"](x))
        leaky = kc.CollapsibleActivation(
            "leaky_relu",
            activation_kwargs={"negative_slope": 0.1},
            alpha_regularizer=None,
        )
        self.assert_close(leaky(x), np.where(x > 0, x, 0.1 * x))

    def test_gradient_reaches_alpha(self):
        layer = kc.CollapsibleActivation("gelu", trainable_alpha=True)
        model = keras.Sequential([keras.Input((6,)), layer, keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
        x = self.random_inputs((256, 6), scale=2.0)
        y = x.sum(axis=1, keepdims=True)  # a linear target: alpha grows toward 1
        model.fit(x, y, epochs=5, batch_size=32, verbose=0)
        assert float(layer.alpha_numpy()) > 0.05

    @pytest.mark.parametrize(
        "shared_axes, expected_shape",
        [("all", ()), (None, (4, 4, 3)), ([1, 2], (1, 1, 3)), (3, (4, 4, 1))],
    )
    def test_shared_axes_shape_and_values(self, shared_axes, expected_shape):
        layer = kc.CollapsiblePReLU(shared_axes=shared_axes, alpha_regularizer=None)
        x = self.random_inputs((2, 4, 4, 3))
        layer.build(x.shape)
        assert tuple(layer.alpha.shape) == expected_shape
        alpha = self.rng(1).uniform(0, 1, expected_shape).astype("float32")
        layer.set_alpha(alpha)
        self.assert_close(layer(x), np.maximum(x, 0) + alpha * np.minimum(x, 0))

    def test_mixed_precision(self):
        keras.config.set_dtype_policy("mixed_float16")
        layer = kc.CollapsibleActivation(
            "gelu", alpha_initializer=keras.initializers.Constant(0.25)
        )
        x = self.random_inputs((3, 8))
        out = layer(keras.ops.cast(x, "float16"))
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        assert keras.backend.standardize_dtype(layer.alpha.dtype) == "float32"
        self.assert_close(
            keras.ops.cast(out, "float32"),
            blend_oracle("gelu", x, 0.25),
            atol=5e-3,
            rtol=5e-3,
        )
        layer.lock_linear()
        self.assert_close(
            keras.ops.cast(layer(keras.ops.cast(x, "float16")), "float32"),
            x.astype("float16").astype("float32"),
            atol=0,
            rtol=0,
        )

    def test_mixed_precision_fit(self):
        keras.config.set_dtype_policy("mixed_float16")
        model = keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(8),
                kc.CollapsiblePReLU(),
                keras.layers.Dense(1, dtype="float32"),
            ]
        )
        model.compile(optimizer="adam", loss="mse")
        history = model.fit(
            self.random_inputs((32, 5)),
            self.random_inputs((32, 1)),
            epochs=2,
            verbose=0,
        )
        assert np.all(np.isfinite(history.history["loss"]))

    def test_no_pull_by_default(self):
        # A pull moves every slope and BN statistics lag behind it: opt in.
        layer = kc.CollapsiblePReLU()
        assert layer.alpha_regularizer is None
        layer(self.random_inputs((2, 3)))
        assert layer.losses == []

    def test_linearity_regularizer_by_name(self):
        layer = kc.CollapsiblePReLU(alpha_regularizer="linearity")
        assert isinstance(layer.alpha_regularizer, kc.LinearityRegularizer)
        layer(self.random_inputs((2, 3)))
        # alpha starts at 0: the penalty is factor * (1 - 0)^2.
        assert float(keras.ops.convert_to_numpy(layer.losses[0])) == pytest.approx(
            layer.alpha_regularizer.factor
        )
        assert kc.CollapsiblePReLU(alpha_regularizer=None).alpha_regularizer is None


class TestFrozenAlpha(TestCase):
    def test_trained_only_when_pulled_by_default(self):
        x = self.random_inputs((2, 3))
        cases = [
            ({}, False),
            ({"alpha_regularizer": "linearity"}, True),
            ({"trainable_alpha": True}, True),
            ({"alpha_regularizer": "linearity", "trainable_alpha": False}, False),
        ]
        for kwargs, trainable in cases:
            layer = kc.CollapsiblePReLU(**kwargs)
            layer(x)
            assert layer.alpha.trainable is trainable, kwargs
            clone = kc.CollapsiblePReLU.from_config(layer.get_config())
            clone(x)
            assert clone.alpha.trainable is trainable, kwargs

    @pytest.mark.parametrize("act", ["relu", "gelu"])
    def test_frozen_slope_computes_the_blend_in_training(self, act):
        # At rest the frozen layer is its activation alone; moved or locked,
        # the blend: both as a NumPy oracle computes them, training or not.
        x = self.random_inputs((4, 6), scale=3.0)
        layer = kc.CollapsibleActivation(act)
        layer(x)
        plain = keras.ops.convert_to_numpy(keras.activations.get(act)(x))
        for training in (True, False):
            self.assert_close(layer(x, training=training), plain)
        layer.set_alpha(0.25)
        for training in (True, False):
            self.assert_close(layer(x, training=training), 0.25 * x + 0.75 * plain)
        layer.lock_linear()
        layer.set_alpha(0.0)  # the lock wins over alpha
        for training in (True, False):
            self.assert_close(layer(x, training=training), x)

    def test_frozen_slope_moved_inside_fit_reaches_the_compiled_step(self):
        # The callbacks move a frozen alpha between epochs: the compiled step
        # must read it (a trace-time Python branch would not).
        inputs = keras.Input((4,))
        act = kc.CollapsiblePReLU()
        model = keras.Model(inputs, act(inputs))
        model.compile(keras.optimizers.SGD(0.0), "mse")
        x = -np.abs(self.random_inputs((32, 4))) - 0.5  # ReLU gives 0 here
        seen = []

        class Move(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                act.set_alpha([0.0, 1.0][epoch])

            def on_epoch_end(self, epoch, logs=None):
                seen.append(logs["loss"])

        model.fit(
            x, np.zeros_like(x), epochs=2, batch_size=32, verbose=0, callbacks=[Move()]
        )
        assert seen[0] == pytest.approx(0.0, abs=1e-7)
        assert seen[1] == pytest.approx(float(np.mean(x**2)), rel=1e-4)

    def test_bad_trainable_alpha(self):
        with pytest.raises(ValueError, match="Received: trainable_alpha='yes'"):
            kc.CollapsiblePReLU(trainable_alpha="yes")
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.ReLU()(inputs))
        with pytest.raises(ValueError, match="trainable_alpha=1"):
            kc.make_collapsible(model, trainable_alpha=1)

    def test_alpha_can_be_frozen_to_keep_a_relu(self):
        inputs = keras.Input((4,))
        act = kc.CollapsiblePReLU(alpha_regularizer=None)
        model = keras.Model(inputs, keras.layers.Dense(1)(act(inputs)))
        act.alpha.trainable = False
        model.compile(keras.optimizers.SGD(0.5), "mse")
        x = self.random_inputs((64, 4))
        model.fit(x, x[:, :1] ** 2, epochs=2, verbose=0)
        assert act.alpha_numpy() == 0.0
        assert all(w is not act.alpha for w in model.trainable_weights)


class TestBadInput(TestCase):
    @pytest.mark.parametrize("name", ["no_such_activation", "softmax", "linear", 3])
    def test_unknown_or_non_elementwise_activation(self, name):
        with pytest.raises(ValueError, match="Received: activation="):
            kc.CollapsibleActivation(name)

    def test_bad_activation_kwargs(self):
        with pytest.raises(ValueError, match="does not accept"):
            kc.CollapsibleActivation("gelu", activation_kwargs={"max_value": 6})

    def test_alpha_that_does_not_broadcast(self):
        layer = kc.CollapsiblePReLU(shared_axes=[1, 2])
        layer.build((None, 4, 4, 3))
        with pytest.raises(ValueError, match=r"broadcasts to it.*shape \(5,\)"):
            layer.set_alpha(np.zeros(5))

    @pytest.mark.parametrize("axes", [[0], [4], "channels", [1.5]])
    def test_bad_shared_axes(self, axes):
        with pytest.raises(ValueError, match="shared_axes"):
            layer = kc.CollapsiblePReLU(shared_axes=axes)
            layer.build((None, 4, 4, 3))

    def test_per_element_alpha_needs_known_sizes(self):
        layer = kc.CollapsiblePReLU(shared_axes=None)
        with pytest.raises(ValueError, match="known size"):
            layer.build((None, None, None, 3))

    def test_unbuilt_layer(self):
        with pytest.raises(ValueError, match="not built"):
            kc.CollapsiblePReLU().is_linear  # noqa: B018


class TestNonFiniteInputs(TestCase):
    @pytest.mark.parametrize("activation", ["relu", "relu6", "elu", "tanh", "silu"])
    @pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
    def test_infinities_map_as_the_blend_s_limit(self, activation, alpha):
        layer = kc.CollapsibleActivation(activation)
        layer.build((None, 4))
        layer.set_alpha(alpha)
        x = np.array([[np.inf, -np.inf, 1.5, np.nan]], "float32")
        got = keras.ops.convert_to_numpy(layer(x))
        act = keras.ops.convert_to_numpy(keras.activations.get(activation)(x))
        with np.errstate(invalid="ignore"):
            # The limit of alpha * x + (1 - alpha) * act(x), with 0 * inf = 0.
            expected = np.where(
                alpha == 0, act, np.where(alpha == 1, x, alpha * x + (1 - alpha) * act)
            )
        np.testing.assert_allclose(got[:, :3], expected[:, :3], rtol=1e-6)
        assert np.isnan(got[0, 3])

    def test_relu_at_alpha_zero_is_relu_at_infinity(self):
        layer = kc.CollapsiblePReLU()
        layer.build((None, 2))
        got = keras.ops.convert_to_numpy(
            layer(np.array([[np.inf, -np.inf]], "float32"))
        )
        np.testing.assert_array_equal(got, [[np.inf, 0.0]])


class TestDescribe(TestCase):
    def test_says_what_it_computes_now(self):
        layer = kc.CollapsibleActivation("gelu", shared_axes=None)
        layer.build((None, 3))
        assert layer.describe() == "gelu"
        layer.set_alpha([0.1, 0.5, 0.9])
        assert layer.describe() == "gelu a=0.1..0.9"
        prelu = kc.CollapsiblePReLU()
        prelu.build((None, 3))
        prelu.set_alpha(-0.4)
        assert prelu.describe() == "relu a=-0.4"
        prelu.lock_linear()
        assert prelu.describe() == "linear"

    def test_the_analysis_table_shows_a_trained_slope(self):
        x = keras.Input((4,))
        h = keras.layers.BatchNormalization()(keras.layers.Dense(3)(x))
        prelu = kc.CollapsiblePReLU(name="act")
        model = keras.Model(x, keras.layers.Dense(2)(prelu(h)))
        prelu.set_alpha(-0.4)
        (states,) = kc.analyze_batchnorm(model)
        assert states.activation == "relu a=-0.4"
        assert "relu a=-0.4" in str(kc.analyze_batchnorm(model))


class TestSlopeScaleAndRange(TestCase):
    """`alpha_scale` (the slope's own learning-rate scale) and `alpha_range`
    (a projection after every optimizer step)."""

    def test_stored_value_is_alpha_over_the_scale_and_the_blend_uses_alpha(self):
        layer = kc.CollapsibleActivation("gelu", alpha_scale=8.0)
        x = self.random_inputs((4, 5))
        layer.build(x.shape)
        layer.set_alpha(0.75)
        stored = keras.ops.convert_to_numpy(layer.alpha)
        self.assert_close(stored, 0.75 / 8.0)
        self.assert_close(layer.alpha_numpy(), 0.75)
        act = keras.ops.convert_to_numpy(keras.activations.gelu(x))
        self.assert_close(layer(x), 0.75 * x + 0.25 * act, atol=1e-6)

    @pytest.mark.parametrize("given, expected", [(30.0, 32.0), (1, 1.0), (0.3, 0.25)])
    def test_scale_is_rounded_to_a_power_of_two(self, given, expected):
        assert kc.CollapsiblePReLU(alpha_scale=given).alpha_scale == expected

    def test_regularized_slopes_default_to_scale_32_and_range_0_1(self):
        layer = kc.CollapsiblePReLU(alpha_regularizer="linearity")
        assert (layer.alpha_scale, layer.alpha_range) == (32.0, (0.0, 1.0))
        free = kc.CollapsiblePReLU()
        assert (free.alpha_scale, free.alpha_range) == (1.0, None)

    def test_the_regularizer_sees_alpha(self):
        layer = kc.CollapsiblePReLU(alpha_regularizer=kc.LinearityRegularizer(2.0))
        layer.build((None, 3))
        layer.set_alpha(0.5)
        # 2 * (1 - 0.5)^2, whatever the stored value (0.5 / 32)
        self.assert_close(sum(layer.losses), 0.5)

    def test_one_adam_step_moves_alpha_scale_times_the_learning_rate(self):
        inputs = keras.Input((4,))
        layer = kc.CollapsiblePReLU(trainable_alpha=True, alpha_scale=16.0)
        model = keras.Model(inputs, layer(inputs))
        model.compile(keras.optimizers.Adam(1e-3), "mse")
        x = -np.ones((8, 4), "float32")  # negative inputs: alpha matters
        model.train_on_batch(x, np.zeros_like(x) - 5.0)  # wants alpha up
        # Adam's first step is lr * sign(gradient) on the stored value.
        self.assert_close(layer.alpha_numpy(), 16.0 * 1e-3, atol=1e-6)

    def test_range_projects_after_each_step_and_reaches_the_bound_exactly(self):
        inputs = keras.Input((4,))
        layer = kc.CollapsiblePReLU(
            trainable_alpha=True, alpha_scale=64.0, alpha_range=(0.0, 1.0)
        )
        model = keras.Model(inputs, layer(inputs))
        model.compile(keras.optimizers.Adam(0.05), "mse")
        x = -np.ones((8, 4), "float32")
        for _ in range(5):  # each step would move alpha by 3.2
            model.train_on_batch(x, np.zeros_like(x) - 5.0)
        assert float(layer.alpha_numpy()) == 1.0
        assert layer.is_linear

    def test_pinned_range_keeps_a_trainable_slope_at_the_activation(self):
        inputs = keras.Input((4,))
        layer = kc.CollapsiblePReLU(trainable_alpha=True, alpha_scale=64.0)
        model = keras.Model(inputs, layer(inputs))
        model.compile(keras.optimizers.Adam(0.05), "mse")
        layer.set_alpha(0.4)
        layer.set_alpha_range((0.0, 0.0))
        assert float(layer.alpha_numpy()) == 0.0
        x = -np.ones((8, 4), "float32")
        model.train_on_batch(x, np.zeros_like(x) - 5.0)
        assert float(layer.alpha_numpy()) == 0.0

    def test_set_scale_keeps_alpha(self):
        layer = kc.CollapsiblePReLU(trainable_alpha=True)
        layer.build((None, 3))
        layer.set_alpha(0.3)
        layer.set_alpha_scale(128)
        self.assert_close(layer.alpha_numpy(), 0.3)
        self.assert_close(keras.ops.convert_to_numpy(layer.alpha), 0.3 / 128)

    def test_config_round_trip_and_saved_model(self, tmp_path):
        inputs = keras.Input((4,))
        layer = kc.CollapsiblePReLU(
            trainable_alpha=True, alpha_scale=16.0, alpha_range=(0.0, 1.0)
        )
        model = keras.Model(inputs, layer(inputs))
        layer.set_alpha(0.625)
        loaded = self.save_and_load(model, tmp_path)
        again = loaded.layers[-1]
        assert (again.alpha_scale, again.alpha_range) == (16.0, (0.0, 1.0))
        self.assert_close(again.alpha_numpy(), 0.625)
        x = self.random_inputs((3, 4))
        self.assert_close(loaded(x), model(x))

    def test_a_config_from_before_the_scale_stores_alpha_itself(self):
        config = kc.CollapsiblePReLU(alpha_regularizer="linearity").get_config()
        del config["alpha_scale"], config["alpha_range"]
        old = kc.CollapsiblePReLU.from_config(config)
        assert (old.alpha_scale, old.alpha_range) == (1.0, None)

    @pytest.mark.parametrize("scale", [0, -2.0, float("inf"), True, "big"])
    def test_bad_scale(self, scale):
        with pytest.raises(ValueError, match="alpha_scale"):
            kc.CollapsiblePReLU(alpha_scale=scale)

    @pytest.mark.parametrize("bounds", [(1.0, 0.0), (0.0,), "01", (0.0, float("nan"))])
    def test_bad_range(self, bounds):
        with pytest.raises(ValueError, match="alpha_range"):
            kc.CollapsiblePReLU(alpha_range=bounds)
