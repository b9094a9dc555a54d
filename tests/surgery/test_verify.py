"""Verification on the paths users run, on inputs that fit the model, at the
precision the model computes in."""

import importlib

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.graph.sample_inputs import random_inputs
from keras_collapse.surgery.verify import verify_equivalent
from tests.integration import builders
from tests.testing import TestCase

surgery_module = importlib.import_module("keras_collapse.surgery.entry")


def randomize_bn(layer, seed):
    builders.randomize_batchnorm(layer, np.random.default_rng(seed))


def leaky_after_conv_add(slope=0.01):
    """Conv -> BN -> Add -> LeakyReLU: folding the BN leaves the pattern
    TensorFlow's oneDNN fusion computes with a wrong slope when compiled."""
    x = keras.Input((8, 8, 3))
    a = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, padding="same")(x))
    b = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, padding="same")(x))
    norm = keras.layers.BatchNormalization()
    c = norm(keras.layers.Conv2D(4, 3, padding="same")(a))
    randomize_bn(norm, 0)
    y = keras.layers.LeakyReLU(slope)(keras.layers.Add()([c, b]))
    return keras.Model(x, y)


class TestCompiledPath(TestCase):
    @pytest.mark.parametrize("slope", [0.01, 0.3, 1.5])
    def test_leaky_after_conv_add_is_right_when_compiled(self, slope):
        model = leaky_after_conv_add(slope)
        small, report = kc.surgery(model, return_report=True)
        assert report.count("safe_form") == 1
        assert "LeakyReLU" not in [type(la).__name__ for la in small.layers]
        x = self.random_inputs((4, 8, 8, 3), scale=2.0)
        # NumPy oracle: the input model's pre-activation, leaky ReLU'd.
        pre = keras.Model(model.input, model.layers[-1].input)
        z = keras.ops.convert_to_numpy(pre(x))
        expected = np.where(z > 0, z, slope * z)
        self.assert_close(small.predict_on_batch(x), expected, atol=1e-5)
        self.assert_close(small(x), expected, atol=1e-5)
        assert set(report.verification.paths) >= {"compiled"}

    def test_verification_runs_the_compiled_path(self):
        model = leaky_after_conv_add()
        _, report = kc.surgery(model, return_report=True)
        expected = (
            ("compiled",)
            if keras.backend.backend() == "jax"
            else (
                "eager",
                "compiled",
            )
        )
        assert tuple(report.verification.paths) == expected
        assert report.verification.passed
        assert report.as_dict()["verification"]["paths"].keys() == set(expected)

    @pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="the oneDNN fusion bug is TensorFlow's",
    )
    def test_compiled_only_divergence_is_caught(self, monkeypatch):
        # Without the safe form, TF's predict computes the pattern wrongly
        # while eager calls are right: verification must refuse the result.
        monkeypatch.setattr(surgery_module, "use_safe_forms", lambda g, j: 0)
        with pytest.raises(kc.VerificationError, match="when compiled"):
            kc.surgery(leaky_after_conv_add())


class TestSampleInputs(TestCase):
    def test_real_inputs_are_used(self):
        x = keras.Input((5,))
        model = keras.Model(x, keras.layers.Dense(3)(keras.layers.Dense(4)(x)))
        data = self.random_inputs((40, 5))
        _, report = kc.surgery(model, sample_inputs=data, return_report=True)
        assert report.verification.inputs == "sample"
        _, report = kc.surgery(
            model, sample_inputs=(data, np.zeros(40)), return_report=True
        )
        assert report.verification.inputs == "sample"

    def test_inputs_that_do_not_fit_are_refused(self):
        x = keras.Input((5,))
        model = keras.Model(x, keras.layers.Dense(3)(x))
        with pytest.raises(ValueError, match=r"expected shape \(None, 5\)"):
            kc.surgery(model, sample_inputs=self.random_inputs((4, 6)))

    def test_ids_stay_within_every_embedding(self):
        tokens = keras.Input((6,), dtype="int32", name="token_ids")
        segments = keras.Input((6,), dtype="int32", name="segment_ids")
        mask = keras.Input((6,), dtype="int32", name="padding_mask")
        e = keras.layers.Embedding(1000, 8)(tokens)
        e = e + keras.layers.Embedding(2, 8)(segments)
        e = e * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
        y = keras.layers.Dense(8)(keras.layers.Dense(8)(e))
        model = keras.Model([tokens, segments, mask], y)
        ids, segs, pad = random_inputs(model, batch_size=64)
        assert ids.min() >= 0 and ids.max() < 1000 and ids.max() > 8
        assert set(np.unique(segs)) <= {0, 1}
        assert set(np.unique(pad)) <= {0, 1} and np.all(pad[:, 0] == 1)
        # Padding masks are ones, then zeros.
        assert np.all(np.diff(pad, axis=1) <= 0)
        small, report = kc.surgery(model, return_report=True)
        assert report.count("merge") == 1

    def test_an_id_passed_on_through_a_cast_is_bounded(self):
        tokens = keras.Input((4,), dtype="int32")
        ids = keras.ops.cast(tokens, "int16")
        y = keras.layers.Embedding(3, 4)(ids)
        model = keras.Model(tokens, keras.layers.Dense(2)(y))
        assert random_inputs(model, batch_size=256).max() < 3
        kc.surgery(model)

    def test_mask_zero_embedding_gets_padding(self):
        tokens = keras.Input((7,), dtype="int32")
        y = keras.layers.Embedding(50, 4, mask_zero=True)(tokens)
        model = keras.Model(tokens, keras.layers.LSTM(3)(y))
        ids = random_inputs(model, batch_size=32)
        assert np.all(ids[:, 0] > 0) and np.any(ids == 0) and ids.max() < 50
        kc.surgery(model)

    def test_fixed_batch_size_is_respected(self):
        x = keras.Input(batch_shape=(1, 6))
        model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(3)(x)))
        assert random_inputs(model).shape == (1, 6)
        _, report = kc.surgery(
            model, sample_inputs=self.random_inputs((5, 6)), return_report=True
        )
        assert report.verification.passed
        inputs = keras.Input(batch_shape=(3, 6))
        model3 = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        with pytest.raises(ValueError, match="batches of 3"):
            kc.surgery(model3, sample_inputs=self.random_inputs((2, 6)))


def _bn_cnn():
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3)(x)
    norm = keras.layers.BatchNormalization()
    h = keras.layers.ReLU()(norm(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(3)(h)
    y = keras.layers.Activation("linear", dtype="float32", name="probs")(h)
    model = keras.Model(x, y)
    randomize_bn(norm, 1)
    return model


class TestMixedPrecision(TestCase):
    @pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
    def test_bn_fold_is_judged_at_the_policys_precision(self, policy):
        keras.config.set_dtype_policy(policy)
        model = _bn_cnn()
        small, report = kc.surgery(model, return_report=True)
        check = report.verification
        assert check.policy == policy.split("_")[1] and check.noise is not None
        assert check.tolerance > 1e-5 and check.passed
        assert "float32 copy" in str(report)
        # The float32 output cast of a mixed-precision model is kept.
        assert small.outputs[0].dtype == "float32"
        assert small.output_names == ["probs"]
        assert report.count("fold_bn") == 1

    def test_a_wrong_result_is_still_caught(self, monkeypatch):
        keras.config.set_dtype_policy("mixed_float16")
        model = _bn_cnn()
        pipeline = importlib.import_module("keras_collapse.surgery.passes.pipeline")
        real = pipeline.fold_batchnorms

        def broken(graph, journal):
            done = real(graph, journal)
            for node in graph.layer_nodes():
                if node.weights is not None and type(node.layer).__name__ == "Conv2D":
                    node.weights = [w * 1.1 for w in node.weights]
            return done

        monkeypatch.setattr(pipeline, "fold_batchnorms", broken)
        with pytest.raises(kc.VerificationError, match="float32 copy"):
            kc.surgery(model)

    def test_full_precision_keeps_the_strict_tolerance(self):
        model = _bn_cnn()
        x = random_inputs(model)
        check = verify_equivalent(model, model, x, 1e-5)
        assert check.tolerance == 1e-5 and check.noise is None
        assert check.deviation == 0.0
