"""BatchNorm re-estimation against NumPy population statistics of each BN's
input, as the recalibrated model computes it."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.testing import TestCase

layers = keras.layers


def stacked_model():
    """Three BNs in a row (each one's input depends on the one before), a
    residual branch and a nested model with a BN inside."""
    inner_in = keras.Input((6, 6, 4))
    inner = keras.Model(
        inner_in,
        layers.BatchNormalization(name="inner_bn")(layers.Conv2D(4, 1)(inner_in)),
        name="inner",
    )
    inputs = keras.Input((6, 6, 3))
    h = layers.Conv2D(4, 3, padding="same")(inputs)
    h = layers.ReLU()(layers.BatchNormalization(name="bn1")(h))
    branch = layers.BatchNormalization(name="bn2")(
        layers.Conv2D(4, 3, padding="same")(h)
    )
    h = layers.ReLU(name="pre_inner")(layers.Add()([h, branch]))
    h = inner(h)
    h = layers.BatchNormalization(name="bn3")(layers.Conv2D(2, 1)(h))
    return keras.Model(inputs, layers.Dense(3)(layers.Flatten()(h)))


def bn_layers(model):
    return {
        "bn1": model.get_layer("bn1"),
        "bn2": model.get_layer("bn2"),
        "bn3": model.get_layer("bn3"),
        "inner_bn": model.get_layer("inner").get_layer("inner_bn"),
    }


def bn_input(model, name, x):
    """What BN `name` reads, computed by the (recalibrated) model itself."""
    if name == "inner_bn":
        inner = model.get_layer("inner")
        feed = keras.Model(model.inputs, model.get_layer("pre_inner").output)
        feed = feed.predict(x, verbose=0)
        return keras.Model(inner.inputs, inner.get_layer("inner_bn").input).predict(
            feed, verbose=0
        )
    return keras.Model(model.inputs, model.get_layer(name).input).predict(x, verbose=0)


def data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 6, 6, 3)) * 2 + 1).astype("float32")


class TestPopulationStatistics(TestCase):
    def test_every_bn_gets_the_population_statistics_of_its_input(self):
        model = stacked_model()
        x = data()
        result = kc.recalibrate_batchnorm(model, x, batch_size=48)
        assert result is not model
        for name, bn in bn_layers(result).items():
            z = bn_input(result, name, x).reshape(-1, 4 if name != "bn3" else 2)
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(bn.moving_mean), z.mean(0), atol=1e-4
            )
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(bn.moving_variance),
                z.var(0),
                rtol=1e-4,
                atol=1e-5,
            )

    def test_inference_then_matches_batch_statistics_on_the_whole_data(self):
        # One BN right after the input: inference with the new statistics is
        # training-mode BN over the whole data set.
        inputs = keras.Input((5,))
        bn = layers.BatchNormalization(name="bn")
        model = keras.Model(inputs, bn(inputs))
        x = data().reshape(-1, 5)[:240] * 3 + 2
        kc.recalibrate_batchnorm(model, x, in_place=True)
        expected = keras.ops.convert_to_numpy(bn(x, training=True))
        got = model.predict(x, verbose=0)
        self.assert_close(got, expected, atol=1e-4)

    def test_input_model_left_alone_unless_in_place(self):
        model = stacked_model()
        before = [w.copy() for w in model.get_weights()]
        kc.recalibrate_batchnorm(model, data())
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)
        same = kc.recalibrate_batchnorm(model, data(), in_place=True)
        assert same is model
        moved = keras.ops.convert_to_numpy(model.get_layer("bn1").moving_mean)
        assert not np.allclose(moved, 0.0)

    def test_generator_with_max_samples(self):
        model = stacked_model()
        x = data(90)

        def batches():
            for i in range(0, 90, 30):
                yield x[i : i + 30]

        a = kc.recalibrate_batchnorm(model, batches(), max_samples=90)
        b = kc.recalibrate_batchnorm(model, x)
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_allclose(wa, wb, atol=1e-5)


class TestSettled(TestCase):
    def test_inside_the_population_statistics_after_the_ones_before(self):
        from keras_collapse.actions.recalibrate import BatchNormRecalibrator

        model = stacked_model()
        x = data()
        before = [w.copy() for w in model.get_weights()]
        oracle = kc.recalibrate_batchnorm(model, x).predict(x, verbose=0)
        stale = model.predict(x, verbose=0)
        with BatchNormRecalibrator(model).settled(x, batch_size=48):
            inside = model.predict(x, verbose=0)
        self.assert_close(inside, oracle, atol=1e-4)
        assert not np.allclose(stale, oracle, atol=1e-2)
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_put_back_when_the_body_raises(self):
        from keras_collapse.actions.recalibrate import BatchNormRecalibrator

        model = stacked_model()
        before = [w.copy() for w in model.get_weights()]
        with pytest.raises(RuntimeError, match="inside"):
            with BatchNormRecalibrator(model).settled(data()):
                raise RuntimeError("inside")
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)


class TestIntegerData(TestCase):
    def test_uint8_images_are_cast_as_predict_casts_them(self):
        # Issue 23: uint8 images, which `predict` takes, failed in the Conv.
        images = np.random.default_rng(0).integers(0, 256, (64, 6, 6, 3))
        images = images.astype("uint8")
        model = stacked_model()
        got = kc.recalibrate_batchnorm(model, images, batch_size=20)
        want = kc.recalibrate_batchnorm(model, images.astype("float32"))
        for a, b in zip(got.get_weights(), want.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)
        moved = keras.ops.convert_to_numpy(got.get_layer("bn1").moving_mean)
        assert np.abs(moved).max() > 1.0  # pixel values, not zeros


class TestBadInput(TestCase):
    def test_wrong_shape_changes_nothing(self):
        model = stacked_model()
        before = [w.copy() for w in model.get_weights()]
        with pytest.raises(ValueError, match="expected shape"):
            kc.recalibrate_batchnorm(
                model, np.zeros((4, 5, 5, 3), "float32"), in_place=True
            )
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_non_finite_and_empty(self):
        x = data(8)
        x[3, 0, 0, 0] = np.inf
        with pytest.raises(ValueError, match="non-finite"):
            kc.recalibrate_batchnorm(stacked_model(), x)
        with pytest.raises(ValueError, match="empty"):
            kc.recalibrate_batchnorm(stacked_model(), data(0))

    def test_endless_generator(self):
        def endless():
            while True:
                yield data(4)

        with pytest.raises(ValueError, match="max_samples"):
            kc.recalibrate_batchnorm(stacked_model(), endless())

    def test_not_a_model(self):
        with pytest.raises(ValueError, match="keras.Model"):
            kc.recalibrate_batchnorm("model.keras", data(4))
