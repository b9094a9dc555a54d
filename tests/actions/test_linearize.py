"""Linearizing the TLC way, and surgery of the result."""

import math

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.actions.linearize import ZeroChannels
from tests.scores.test_batchnorm import set_bn
from tests.testing import TestCase

layers = keras.layers


def conv_bn_act(x, filters, name, kernel=3, relu6=False):
    x = layers.Conv2D(filters, kernel, padding="same", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return kc.CollapsibleActivation(
        "relu6" if relu6 else "relu", alpha_regularizer=None, name=f"{name}_act"
    )(x)


def set_random_bns(model, seed=0):
    """Trained-looking BNs: every third channel surely OFF (beta = -3 gamma:
    P(OFF) = 0.9987), the others leaning either way."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            gamma, beta = rng.uniform(0.3, 1.5, c), rng.normal(0.3, 1.0, c)
            beta[::3] = -3.0 * gamma[::3]
            set_bn(layer, gamma, beta)
            mean, var = rng.normal(0, 0.3, c), rng.uniform(0.5, 1.5, c)
            gamma, beta = layer.get_weights()[:2]
            layer.set_weights([gamma, beta, mean, var])
    return model


def conv_chain():
    inputs = keras.Input((8, 8, 3))
    h = conv_bn_act(inputs, 8, "a", kernel=1)
    h = conv_bn_act(h, 12, "b")
    h = conv_bn_act(h, 8, "c", kernel=1)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, layers.Dense(3)(h), name="conv_chain")


def inverted_residual():
    inputs = keras.Input((8, 8, 4))
    h = conv_bn_act(inputs, 24, "expand", kernel=1, relu6=True)
    h = layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = layers.BatchNormalization(name="dw_bn")(h)
    h = kc.CollapsibleActivation("relu6", alpha_regularizer=None, name="dw_act")(h)
    h = layers.BatchNormalization(name="project_bn")(layers.Conv2D(4, 1)(h))
    h = layers.Add()([inputs, h])
    return keras.Model(inputs, layers.Conv2D(2, 1)(h), name="inverted_residual")


def mlp():
    inputs = keras.Input((6,))
    h = inputs
    for i, width in enumerate((16, 16, 8)):
        h = layers.BatchNormalization(name=f"bn{i}")(layers.Dense(width)(h))
        h = kc.CollapsibleActivation(alpha_regularizer=None, name=f"act{i}")(h)
    return keras.Model(inputs, layers.Dense(2)(h), name="mlp")


BUILDERS = [conv_chain, inverted_residual, mlp]


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


class TestLinearize(TestCase):
    @pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
    def test_surgery_computes_what_the_linearized_model_computes(self, builder):
        model = set_random_bns(builder())
        x = self.random_inputs((4, *model.input_shape[1:]))
        names = [layer.name for layer in kc.collapsible_layers(model)]
        done = kc.linearize(model, names)
        assert sum(d.off for d in done) > 0  # something to cut
        expected = predict(model, x)
        small, report = kc.surgery(model, return_report=True)
        got = predict(small, x)
        assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected))
        assert report.after.params < report.before.params
        assert report.after.depth < report.before.depth

    def test_off_channels_are_zeroed_on_channels_kept(self):
        model = set_random_bns(mlp())
        bn = model.get_layer("bn1")
        gamma0, beta0 = (keras.ops.convert_to_numpy(w) for w in (bn.gamma, bn.beta))
        (done,) = kc.linearize(model, "act1")
        gamma, beta = (keras.ops.convert_to_numpy(w) for w in (bn.gamma, bn.beta))
        # OFF where the analysis is sure (P(OFF) >= 0.95), by a NumPy oracle.
        p_off = 0.5 * np.vectorize(math.erfc)(beta0 / (np.abs(gamma0) * math.sqrt(2)))
        off = p_off >= 0.95
        assert off.any() and not off.all()
        assert done.off == off.sum() and done.on == (~off).sum()
        np.testing.assert_array_equal(gamma[off], 0.0)
        np.testing.assert_array_equal(beta[off], 0.0)
        np.testing.assert_array_equal(gamma[~off], gamma0[~off])
        assert model.get_layer("act1").is_locked
        assert not model.get_layer("act0").is_locked

    def test_the_model_computes_the_zeroed_channels_as_zero(self):
        model = set_random_bns(mlp())
        probe = keras.Model(model.input, model.get_layer("act1").output)
        (done,) = kc.linearize(model, "act1")
        y = predict(probe, self.random_inputs((16, 6)))
        off = keras.ops.convert_to_numpy(model.get_layer("bn1").gamma) == 0
        np.testing.assert_array_equal(y[:, off], 0.0)
        assert (y[:, ~off] < 0).any()  # ON channels pass through, negatives too

    def test_undo(self):
        model = set_random_bns(mlp())
        before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
        for record in kc.linearize(model, ["act0", "act2"]):
            record.undo()
        for w, b in zip(model.weights, before):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), b)
        assert model.get_layer("bn0").gamma.constraint is None

    def test_zeroed_channels_stay_zero_while_training(self):
        model = set_random_bns(mlp())
        model.compile("adam", "mse")
        x, y = self.random_inputs((64, 6)), self.random_inputs((64, 2), seed=1)
        model.fit(x, y, epochs=1, verbose=0)  # builds the train function first
        kc.linearize(model, "act1")
        bn = model.get_layer("bn1")
        gamma_before = keras.ops.convert_to_numpy(bn.gamma).copy()
        model.fit(x, y, epochs=3, batch_size=16, verbose=0)
        gamma = keras.ops.convert_to_numpy(bn.gamma)
        off = gamma_before == 0
        np.testing.assert_array_equal(gamma[off], 0.0)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.beta)[off], 0.0)
        assert np.all(gamma[~off] != gamma_before[~off])  # the others trained

    def test_unpaired_and_scale_free_layers_are_only_locked(self):
        inputs = keras.Input((4,))
        h = layers.BatchNormalization(scale=False)(layers.Dense(4)(inputs))
        h = kc.CollapsibleActivation(name="no_gamma")(h)
        h = kc.CollapsibleActivation(name="after_add")(layers.Add()([h, inputs]))
        model = keras.Model(inputs, h)
        done = {d.name: d for d in kc.linearize(model, ["no_gamma", "after_add"])}
        assert done["no_gamma"].off == 0 and "scale=False" in done["no_gamma"].note
        assert done["after_add"].off == 0 and "merges" in done["after_add"].note
        assert all(layer.is_locked for layer in kc.collapsible_layers(model))

    def test_rejects_other_layers(self):
        model = mlp()
        with pytest.raises(ValueError, match="collapsible activation"):
            kc.linearize(model, "bn0")

    def test_constraint_round_trip(self):
        constraint = ZeroChannels([True, False], keras.constraints.NonNeg())
        clone = keras.constraints.deserialize(keras.constraints.serialize(constraint))
        np.testing.assert_array_equal(clone.mask, [True, False])
        w = keras.ops.convert_to_tensor(np.array([3.0, -2.0], "float32"))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(w)), [0.0, 0.0])


class TestLinearizeArguments(TestCase):
    @pytest.mark.parametrize("bad", [3, 2.5, None, [1, 2], {"a": 1}])
    def test_not_a_layer_choice_is_refused_clearly(self, bad):
        x = keras.Input((6,))
        h = keras.layers.BatchNormalization()(keras.layers.Dense(4)(x))
        model = kc.make_collapsible(
            keras.Model(x, keras.layers.Dense(2)(keras.layers.ReLU()(h)))
        )
        for call in (kc.linearize, kc.lock_linear):
            with pytest.raises(ValueError, match="must be a collapsible activation"):
                call(model, bad)
