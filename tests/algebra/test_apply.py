"""`apply_conv` against the Keras layers it stands for, on one sample."""

import keras
import numpy as np
import pytest

from keras_collapse.algebra.apply import apply_conv
from tests.testing import TestCase


class TestApplyConv(TestCase):
    @pytest.mark.parametrize("padding", ["same", "valid"])
    @pytest.mark.parametrize("strides", [1, 2])
    @pytest.mark.parametrize("kind", ["conv1d", "conv2d", "depthwise2d"])
    def test_matches_the_keras_layer(self, kind, strides, padding):
        rank = 1 if kind == "conv1d" else 2
        spatial = (7,) if rank == 1 else (7, 6)
        x = self.random_inputs((*spatial, 3), seed=2)
        if kind == "depthwise2d":
            layer = keras.layers.DepthwiseConv2D(
                3, strides, padding, depth_multiplier=2, use_bias=False
            )
        else:
            conv = keras.layers.Conv1D if rank == 1 else keras.layers.Conv2D
            layer = conv(4, 3, strides, padding, use_bias=False)
        expected = layer(x[None])[0]
        result = apply_conv(
            x,
            layer.get_weights()[0],
            (strides,) * rank,
            padding,
            depthwise=kind == "depthwise2d",
        )
        self.assert_close(result, expected, atol=1e-5)

    def test_channels_that_do_not_fit(self):
        with pytest.raises(
            ValueError, match=r"3 channels.*Received x of shape \(5, 5, 2\)"
        ):
            apply_conv(np.zeros((5, 5, 2)), np.zeros((3, 3, 3, 4)), (1, 1), "same")
