"""Pins the private Keras behaviour keras_collapse/graph/keras_internals.py
relies on: if a Keras release changes it, these fail first."""

import keras
import numpy as np
import pytest

from keras_collapse.graph import keras_internals
from tests.testing import TestCase


def ones(rows=64, width=16):
    return np.ones((rows, width), "float32")


class TestTrainingContext(TestCase):
    @pytest.mark.parametrize("mode", [True, False])
    def test_a_layer_called_without_training_takes_the_mode(self, mode):
        dropout = keras.layers.Dropout(0.5, seed=1)
        with keras_internals.training_context(mode):
            out = keras.ops.convert_to_numpy(dropout(ones()))
        dropped = float(np.mean(out == 0))
        if mode:
            assert 0.3 < dropped < 0.7
        else:
            np.testing.assert_array_equal(out, ones())

    def test_batchnorm_uses_batch_statistics_in_training_mode(self):
        bn = keras.layers.BatchNormalization()
        x = 5.0 + np.random.default_rng(0).standard_normal((64, 4)).astype("float32")
        bn.build(x.shape)
        with keras_internals.training_context(True):
            trained = keras.ops.convert_to_numpy(bn(x))
        with keras_internals.training_context(False):
            inferred = keras.ops.convert_to_numpy(bn(x))
        assert abs(float(trained.mean())) < 0.05  # normalized by the batch
        assert float(inferred.mean()) > 4.5  # moving mean 0, variance 1

    def test_the_previous_context_comes_back(self):
        dropout = keras.layers.Dropout(0.5, seed=1)
        with pytest.raises(RuntimeError):
            with keras_internals.training_context(True):
                raise RuntimeError("inside")
        out = keras.ops.convert_to_numpy(dropout(ones()))  # default: inference
        np.testing.assert_array_equal(out, ones())


class TestLambdaOutputShape:
    def test_what_the_lambda_was_given(self):
        assert keras_internals.lambda_output_shape(
            keras.layers.Lambda(lambda t: t, output_shape=(3,))
        ) == (3,)
        assert (
            keras_internals.lambda_output_shape(keras.layers.Lambda(lambda t: t))
            is None
        )
        shape_fn = lambda shape: shape  # noqa: E731
        layer = keras.layers.Lambda(lambda t: t, output_shape=shape_fn)
        assert keras_internals.lambda_output_shape(layer) is shape_fn
