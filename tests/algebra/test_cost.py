import keras
import numpy as np
import pytest

from keras_collapse.algebra import conv_macs
from keras_collapse.algebra import conv_output_shape
from keras_collapse.algebra import conv_params
from keras_collapse.algebra import dense_macs
from keras_collapse.algebra import dense_params
from keras_collapse.algebra.cost import same_padding
from keras_collapse.algebra.cost import taps_inside


@pytest.mark.parametrize("size", [(7, 8), (8, 7), (5, 5)])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("strides", [(1, 1), (2, 1), (2, 2)])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv_output_shape_matches_keras(size, kernel, strides, padding):
    layer = keras.layers.Conv2D(1, kernel, strides, padding)
    output = layer(np.zeros((1, *size, 1), dtype="float32"))

    assert conv_output_shape(size, kernel, strides, padding) == tuple(output.shape[1:3])


def test_taps_inside_and_same_padding_match_keras():
    # Keras' "same" conv of an image of ones with one-hot taps: output
    # channel j at position i is 1 exactly where tap j reads inside.
    for size in range(1, 9):
        for kernel in range(1, 6):
            for stride in (1, 2, 3):
                taps = np.eye(kernel, dtype="float32")[:, None, :]  # [k, 1, k]
                read = keras.ops.conv(
                    np.ones((1, size, 1), "float32"), taps, stride, "same"
                )
                expected = keras.ops.convert_to_numpy(read)[0] > 0.5
                inside = taps_inside(size, kernel, stride)
                np.testing.assert_array_equal(inside, expected)
                before, after = same_padding(size, kernel, stride)
                assert before <= after <= before + 1
                padded = np.pad(np.ones(size), (before, after))
                windows = [
                    padded[i * stride : i * stride + kernel] > 0
                    for i in range(len(inside))
                ]
                np.testing.assert_array_equal(np.array(windows), expected)


def test_conv_output_shape_1d_with_scalars():
    assert conv_output_shape(10, 3, 2, "valid") == (4,)
    assert conv_output_shape((10,), (3,), (3,), "same") == (4,)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (((8, 8), 3, 1, "causal"), 'padding "valid" or "same", received \'causal\''),
        (((4, 8), 5, 1, "valid"), "does not fit"),
        (((8, 8), (3, 3, 3), 1, "same"), "`kernel_spatial` as 2 positive ints"),
        (((8, 8), 3, 0, "same"), "`strides` as 2 positive ints"),
    ],
)
def test_conv_output_shape_rejects_bad_arguments(arguments, match):
    with pytest.raises(ValueError, match=match):
        conv_output_shape(*arguments)


def test_conv_macs_counts_every_weight_once_per_output_position():
    assert conv_macs((3, 3, 16, 32), (8, 8)) == 9 * 16 * 32 * 64
    assert conv_macs((5, 4, 6), (10,)) == 5 * 4 * 6 * 10
    assert conv_macs((3, 3, 8, 2), (4, 4), depthwise=True) == 9 * 8 * 2 * 16


def test_conv_macs_reproduces_methods_examples():
    # Two 3x3 convs merged into one 5x5: 18 C^2 -> 25 C^2 MACs per pixel.
    channels = 16
    two_convs = 2 * conv_macs((3, 3, channels, channels), (1, 1))
    assert two_convs == 18 * channels**2
    assert conv_macs((5, 5, channels, channels), (1, 1)) == 25 * channels**2
    # MobileNetV2 block 32 -> 192 -> 32: 14.0k MACs/pixel, one 3x3 conv 9.2k.
    block = (
        conv_macs((1, 1, 32, 192), (1, 1))
        + conv_macs((3, 3, 192, 1), (1, 1), depthwise=True)
        + conv_macs((1, 1, 192, 32), (1, 1))
    )
    assert block == 14016
    assert conv_macs((3, 3, 32, 32), (1, 1)) == 9216


def test_dense_macs():
    assert dense_macs((64, 10)) == 640
    assert dense_macs((64, 10), leading_positions=197) == 640 * 197


@pytest.mark.parametrize(
    ("layer", "input_shape", "depthwise"),
    [
        (lambda bias: keras.layers.Conv2D(6, (3, 5), use_bias=bias), (9, 9, 4), False),
        (lambda bias: keras.layers.Conv1D(6, 3, use_bias=bias), (9, 4), False),
        (
            lambda bias: keras.layers.DepthwiseConv2D(
                3, depth_multiplier=3, use_bias=bias
            ),
            (9, 9, 4),
            True,
        ),
        (lambda bias: keras.layers.Dense(7, use_bias=bias), (4,), None),
    ],
)
@pytest.mark.parametrize("use_bias", [True, False])
def test_params_match_keras(layer, input_shape, depthwise, use_bias):
    layer = layer(use_bias)
    layer.build((None, *input_shape))
    kernel_shape = tuple(layer.kernel.shape)

    if depthwise is None:
        count = dense_params(kernel_shape, use_bias)
    else:
        count = conv_params(kernel_shape, use_bias, depthwise)

    assert count == layer.count_params()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: conv_macs((3, 3, 4, 5), (8,)), "`output_spatial_shape` as 2"),
        (lambda: conv_macs((4,), ()), r"`kernel_shape` \[k\.\., in, out\]"),
        (lambda: dense_macs((3, 3, 4)), "`kernel_shape` as 2 positive ints"),
        (lambda: dense_macs((3, 4), 0), "`leading_positions` as 1 positive int"),
        (lambda: conv_params((3, 0, 4, 5)), "`kernel_shape` as positive ints"),
        (lambda: dense_params((3,)), "`kernel_shape` as 2 positive ints"),
    ],
)
def test_cost_rejects_bad_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()
