import itertools

import keras
import numpy as np
import pytest

from keras_collapse.algebra import add_identity_shortcut
from keras_collapse.algebra import add_pointwise_shortcut
from keras_collapse.algebra import compose_conv
from keras_collapse.algebra import compose_dense
from keras_collapse.algebra import compose_depthwise_pointwise
from keras_collapse.algebra import compose_pointwise_depthwise
from keras_collapse.algebra import pad_kernel_to
from keras_collapse.algebra import same_padding_bias_map

from .numpy_conv import conv

STRIDES_2D = [(1, 1), (2, 1), (2, 2)]
ATOL = 1e-10


def _rng(*seed):
    return np.random.default_rng(list(seed))


def _close(actual, expected, atol=ATOL):
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


def _keras(layer, x, kernel, bias):
    """Output of a Keras layer with the given (float32-cast) weights."""
    layer.build(x.shape)
    layer.set_weights([kernel.astype("float32"), bias.astype("float32")])
    return keras.ops.convert_to_numpy(layer(x.astype("float32")))


# --- The oracle itself ----------------------------------------------------------


@pytest.mark.parametrize("size", [(7, 8), (8, 7)])
@pytest.mark.parametrize("strides", STRIDES_2D)
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("depthwise", [False, True])
def test_numpy_oracle_matches_keras(size, strides, padding, depthwise):
    rng = _rng(0)
    x = rng.normal(size=(2, *size, 3))
    if depthwise:
        layer = keras.layers.DepthwiseConv2D(3, strides, padding, depth_multiplier=2)
        kernel, bias = rng.normal(size=(3, 3, 3, 2)), rng.normal(size=6)
    else:
        layer = keras.layers.Conv2D(4, (3, 4), strides, padding)
        kernel, bias = rng.normal(size=(3, 4, 3, 4)), rng.normal(size=4)

    expected = conv(x, kernel, bias, strides, padding, depthwise)
    actual = _keras(layer, x, kernel, bias)

    _close(actual, expected, atol=1e-4)


# --- Dense ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("use_b1", "use_b2"), [(True, True), (False, True), (True, False)]
)
def test_compose_dense_is_exact(use_b1, use_b2):
    rng = _rng(1)
    k1, k2 = rng.normal(size=(6, 5)), rng.normal(size=(5, 3))
    b1 = rng.normal(size=5) if use_b1 else None
    b2 = rng.normal(size=3) if use_b2 else None
    x = rng.normal(size=(4, 6))

    expected = (x @ k1 + (0 if b1 is None else b1)) @ k2 + (0 if b2 is None else b2)
    kernel, bias = compose_dense(k1, b1, k2, b2)

    _close(x @ kernel + bias, expected)


def test_compose_dense_matches_keras():
    rng = _rng(2)
    x = rng.normal(size=(4, 6)).astype("float32")
    first, second = keras.layers.Dense(5), keras.layers.Dense(3)
    model = keras.Sequential([keras.Input((6,)), first, second])
    weights = [rng.normal(size=s) for s in [(6, 5), (5,), (5, 3), (3,)]]
    model.set_weights([w.astype("float32") for w in weights])

    kernel, bias = compose_dense(*weights)
    actual = _keras(keras.layers.Dense(3), x, kernel, bias)

    _close(actual, keras.ops.convert_to_numpy(model(x)), atol=1e-4)


# --- Conv -> Conv ---------------------------------------------------------------


def _conv_chain_case(size1, size2, s1, s2, seed):
    rng = _rng(seed)
    k1 = rng.normal(size=(*size1, 3, 4))
    k2 = rng.normal(size=(*size2, 4, 5))
    b1, b2 = rng.normal(size=4), rng.normal(size=5)
    merged = [a + (b - 1) * s for a, b, s in zip(size1, size2, s1, strict=True)]
    x = rng.normal(size=(2, *[m + 4 + axis for axis, m in enumerate(merged)], 3))
    return x, (k1, b1, s1), (k2, b2, s2)


@pytest.mark.parametrize("k1", [1, 3, 5])
@pytest.mark.parametrize("k2", [1, 3, 5])
@pytest.mark.parametrize(("s1", "s2"), list(itertools.product(STRIDES_2D, repeat=2)))
def test_compose_conv_2d_is_exact(k1, k2, s1, s2):
    x, first, second = _conv_chain_case((k1, k1), (k2, k2), s1, s2, k1 * 10 + k2)

    expected = conv(conv(x, first[0], first[1], s1), second[0], second[1], s2)
    kernel, bias, strides = compose_conv(*first, *second)

    assert kernel.shape[:2] == (k1 + (k2 - 1) * s1[0], k1 + (k2 - 1) * s1[1])
    assert strides == (s1[0] * s2[0], s1[1] * s2[1])
    _close(conv(x, kernel, bias, strides), expected)


@pytest.mark.parametrize("k1", [1, 3, 5])
@pytest.mark.parametrize("k2", [1, 3, 5])
@pytest.mark.parametrize(("s1", "s2"), [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_compose_conv_1d_is_exact(k1, k2, s1, s2):
    x, first, second = _conv_chain_case((k1,), (k2,), (s1,), (s2,), k1 + k2)

    expected = conv(conv(x, *first), *second)
    kernel, bias, strides = compose_conv(
        first[0], first[1], s1, second[0], second[1], s2
    )

    assert strides == (s1 * s2,)
    _close(conv(x, kernel, bias, strides), expected)


def test_compose_conv_rectangular_kernels():
    x, first, second = _conv_chain_case((3, 1), (1, 5), (2, 1), (1, 2), 3)

    expected = conv(conv(x, *first), *second)
    kernel, bias, strides = compose_conv(*first, *second)

    assert kernel.shape == (3, 5, 3, 5)
    _close(conv(x, kernel, bias, strides), expected)


def test_compose_conv_same_padding_is_exact_only_inside():
    rng = _rng(4)
    k1, k2 = rng.normal(size=(3, 3, 2, 3)), rng.normal(size=(3, 3, 3, 2))
    x = rng.normal(size=(1, 8, 8, 2))

    expected = conv(conv(x, k1, np.ones(3), 1, "same"), k2, None, 1, "same")
    kernel, bias, strides = compose_conv(k1, np.ones(3), 1, k2, None, 1)
    actual = conv(x, kernel, bias, strides, "same")

    _close(actual[:, 2:-2, 2:-2], expected[:, 2:-2, 2:-2])
    assert np.abs(actual - expected)[:, 0].max() > 1e-3


@pytest.mark.parametrize("rank", [1, 2])
def test_compose_conv_matches_keras(rank):
    conv_class = keras.layers.Conv1D if rank == 1 else keras.layers.Conv2D
    s1, s2 = ((2,), (1,)) if rank == 1 else ((2, 1), (2, 2))
    x, first, second = _conv_chain_case((3,) * rank, (3,) * rank, s1, s2, 5)
    x = x.astype("float32")
    model = keras.Sequential(
        [keras.Input(x.shape[1:]), conv_class(4, 3, s1), conv_class(5, 3, s2)]
    )
    model.set_weights([w.astype("float32") for w in [*first[:2], *second[:2]]])

    kernel, bias, strides = compose_conv(*first, *second)
    actual = _keras(conv_class(5, kernel.shape[:rank], strides), x, kernel, bias)

    _close(actual, keras.ops.convert_to_numpy(model(x)), atol=1e-4)


# --- Depthwise <-> pointwise ----------------------------------------------------


def _separable_case(rank, k, multiplier, seed):
    rng = _rng(seed)
    dw = rng.normal(size=(*(k,) * rank, 3, multiplier))
    pw = rng.normal(size=(*(1,) * rank, 3 * multiplier, 4))
    return rng, dw, rng.normal(size=3 * multiplier), pw, rng.normal(size=4)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_compose_depthwise_pointwise_is_exact(rank, k, multiplier, strides, padding):
    rng, dw, b_dw, pw, b_pw = _separable_case(rank, k, multiplier, k + strides)
    x = rng.normal(size=(2, *[8 + axis for axis in range(rank)], 3))

    hidden = conv(x, dw, b_dw, strides, padding, depthwise=True)
    expected = conv(hidden, pw, b_pw)
    kernel, bias = compose_depthwise_pointwise(dw, b_dw, pw, b_pw)

    assert kernel.shape == (*(k,) * rank, 3, 4)
    _close(conv(x, kernel, bias, strides, padding), expected)


def test_compose_depthwise_pointwise_matches_keras():
    rng, dw, b_dw, pw, b_pw = _separable_case(2, 3, 2, 6)
    x = rng.normal(size=(2, 8, 9, 3)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            keras.layers.DepthwiseConv2D(3, 2, "same", depth_multiplier=2),
            keras.layers.Conv2D(4, 1),
        ]
    )
    model.set_weights([w.astype("float32") for w in (dw, b_dw, pw, b_pw)])

    kernel, bias = compose_depthwise_pointwise(dw, b_dw, pw, b_pw)
    actual = _keras(keras.layers.Conv2D(4, 3, 2, "same"), x, kernel, bias)

    _close(actual, keras.ops.convert_to_numpy(model(x)), atol=1e-4)


def _pointwise_depthwise_case(rank, k, multiplier, seed):
    rng = _rng(seed)
    pw = rng.normal(size=(*(1,) * rank, 2, 3))
    dw = rng.normal(size=(*(k,) * rank, 3, multiplier))
    return rng, pw, rng.normal(size=3), dw, rng.normal(size=3 * multiplier)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("strides", [1, 2])
def test_compose_pointwise_depthwise_valid_is_exact(rank, k, multiplier, strides):
    rng, pw, b_pw, dw, b_dw = _pointwise_depthwise_case(rank, k, multiplier, k)
    x = rng.normal(size=(2, *[9 + axis for axis in range(rank)], 2))

    expected = conv(conv(x, pw, b_pw), dw, b_dw, strides, depthwise=True)
    kernel, bias = compose_pointwise_depthwise(pw, b_pw, dw, b_dw)

    assert kernel.shape == (*(k,) * rank, 2, 3 * multiplier)
    _close(conv(x, kernel, bias, strides), expected)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("size", [7, 8])
def test_compose_pointwise_depthwise_same_with_bias_map_is_exact(
    rank, k, multiplier, strides, size
):
    rng, pw, b_pw, dw, b_dw = _pointwise_depthwise_case(rank, k, multiplier, size)
    spatial = (size, 15 - size)[:rank]  # odd and even sizes in one input
    x = rng.normal(size=(2, *spatial, 2))

    hidden = conv(x, pw, b_pw)
    expected = conv(hidden, dw, b_dw, strides, "same", depthwise=True)
    kernel, bias = compose_pointwise_depthwise(pw, None, dw, b_dw)
    bias_map = same_padding_bias_map(b_pw, dw, spatial, strides, depthwise=True)

    np.testing.assert_array_equal(bias, b_dw)
    _close(conv(x, kernel, bias, strides, "same") + bias_map, expected)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("strides", STRIDES_2D)
@pytest.mark.parametrize("spatial", [(7, 8), (8, 7), (6, 6)])
def test_pointwise_then_conv_same_with_bias_map_is_exact(k, strides, spatial):
    rng = _rng(k, *strides, *spatial)
    pw, b_pw = rng.normal(size=(1, 1, 2, 3)), rng.normal(size=3)
    k2, b2 = rng.normal(size=(k, k, 3, 4)), rng.normal(size=4)
    x = rng.normal(size=(2, *spatial, 2))

    expected = conv(conv(x, pw, b_pw), k2, b2, strides, "same")
    kernel, bias, merged_strides = compose_conv(pw, None, 1, k2, b2, strides)
    bias_map = same_padding_bias_map(b_pw, k2, spatial, strides)

    _close(conv(x, kernel, bias, merged_strides, "same") + bias_map, expected)


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("strides", STRIDES_2D)
def test_bias_map_is_conv_of_an_all_ones_image(depthwise, strides):
    rng = _rng(7)
    k2, b1 = rng.normal(size=(5, 3, 3, 2)), rng.normal(size=3)
    # Each tap's response to the constant b1, as a one-input-channel kernel.
    if depthwise:
        per_tap = (k2 * b1[:, None]).reshape(5, 3, 1, 6)
    else:
        per_tap = np.einsum("hwco,c->hwo", k2, b1)[:, :, None, :]

    expected = conv(np.ones((1, 9, 8, 1)), per_tap, None, strides, "same")[0]
    actual = same_padding_bias_map(b1, k2, (9, 8), strides, depthwise)

    _close(actual, expected)


def test_compose_pointwise_depthwise_same_without_bias_map_differs_at_border():
    rng, pw, b_pw, dw, b_dw = _pointwise_depthwise_case(2, 3, 1, 8)
    x = rng.normal(size=(1, 6, 6, 2))

    expected = conv(conv(x, pw, b_pw), dw, b_dw, 1, "same", depthwise=True)
    kernel, bias = compose_pointwise_depthwise(pw, b_pw, dw, b_dw)
    actual = conv(x, kernel, bias, 1, "same")

    _close(actual[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1])
    assert np.abs(actual - expected)[:, 0].max() > 1e-3


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_pointwise_depthwise_with_bias_map_matches_keras(size):
    rng, pw, b_pw, dw, b_dw = _pointwise_depthwise_case(2, 3, 2, 9)
    x = rng.normal(size=(2, *size, 2)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            keras.layers.Conv2D(3, 1),
            keras.layers.DepthwiseConv2D(3, 2, "same", depth_multiplier=2),
        ]
    )
    model.set_weights([w.astype("float32") for w in (pw, b_pw, dw, b_dw)])

    kernel, bias = compose_pointwise_depthwise(pw, None, dw, b_dw)
    merged = _keras(keras.layers.Conv2D(6, 3, 2, "same"), x, kernel, bias)
    bias_map = same_padding_bias_map(b_pw, dw, size, 2, depthwise=True)

    _close(merged + bias_map, keras.ops.convert_to_numpy(model(x)), atol=1e-4)


# --- Shortcuts ------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_add_identity_shortcut_is_exact(rank, k):
    rng = _rng(10 + k)
    kernel, bias = rng.normal(size=(*(k,) * rank, 4, 4)), rng.normal(size=4)
    x = rng.normal(size=(2, *(7,) * rank, 4))

    expected = conv(x, kernel, bias, 1, "same") + x
    new_kernel, new_bias = add_identity_shortcut(kernel, bias)

    _close(conv(x, new_kernel, new_bias, 1, "same"), expected)


def test_add_identity_shortcut_dense_without_bias():
    rng = _rng(11)
    kernel, x = rng.normal(size=(5, 5)), rng.normal(size=(3, 5))

    new_kernel, new_bias = add_identity_shortcut(kernel)

    _close(x @ new_kernel + new_bias, x @ kernel + x)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_add_pointwise_shortcut_is_exact(rank, k):
    rng = _rng(12 + k)
    kernel, bias = rng.normal(size=(*(k,) * rank, 3, 4)), rng.normal(size=4)
    sc_kernel, sc_bias = rng.normal(size=(*(1,) * rank, 3, 4)), rng.normal(size=4)
    x = rng.normal(size=(2, *(8,) * rank, 3))

    expected = conv(x, kernel, bias, 1, "same") + conv(x, sc_kernel, sc_bias)
    new_kernel, new_bias = add_pointwise_shortcut(kernel, bias, sc_kernel, sc_bias)

    _close(conv(x, new_kernel, new_bias, 1, "same"), expected)


@pytest.mark.parametrize(("size", "exact"), [(7, True), (8, False)])
def test_add_pointwise_shortcut_stride_2_needs_odd_input(size, exact):
    rng = _rng(13)
    kernel, sc_kernel = rng.normal(size=(3, 3, 2, 2)), rng.normal(size=(1, 1, 2, 2))
    x = rng.normal(size=(1, size, size, 2))

    expected = conv(x, kernel, None, 2, "same") + conv(x, sc_kernel, None, 2, "same")
    new_kernel, new_bias = add_pointwise_shortcut(kernel, None, sc_kernel, None)
    actual = conv(x, new_kernel, new_bias, 2, "same")

    assert np.allclose(actual, expected, rtol=0, atol=ATOL) == exact


@pytest.mark.parametrize("size", [(3, 3), (5, 7)])
def test_pad_kernel_to_keeps_same_padding_output(size):
    rng = _rng(14)
    kernel, x = rng.normal(size=(1, 3, 2, 3)), rng.normal(size=(1, 6, 7, 2))

    padded = pad_kernel_to(kernel, size)

    assert padded.shape == (*size, 2, 3)
    _close(conv(x, padded, None, 1, "same"), conv(x, kernel, None, 1, "same"))


# --- Errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: compose_dense(np.ones((10, 64)), None, np.ones((32, 5)), None),
            r"compose_dense: k1 has 64 output units but k2 expects 32 inputs\. "
            r"Received k1\.shape=\(10, 64\), k2\.shape=\(32, 5\)",
        ),
        (
            lambda: compose_dense(np.ones((3, 4)), np.ones(3), np.ones((4, 5)), None),
            r"`b1` of shape \(4,\), received shape \(3,\)",
        ),
        (
            lambda: compose_conv(
                np.ones((3, 3, 2, 4)), None, 1, np.ones((3, 3, 6, 5)), None, 1
            ),
            r"4 output channels but the second expects 6 inputs\. "
            r"Received shapes \(3, 3, 2, 4\) and \(3, 3, 6, 5\)",
        ),
        (
            lambda: compose_conv(
                np.ones((3, 2, 4)), None, 1, np.ones((3, 3, 4, 5)), None, 1
            ),
            r"`k2` with 3 dimensions.*received shape \(3, 3, 4, 5\)",
        ),
        (
            lambda: compose_conv(
                np.ones((3, 3, 2, 4)), None, (2, 2, 2), np.ones((3, 3, 4, 5)), None, 1
            ),
            r"`strides1` to be a positive int or 2 positive ints, received \(2, 2, 2\)",
        ),
        (
            lambda: compose_conv(
                np.ones((3, 3, 2, 4)), None, 1, np.ones((3, 3, 4, 5)), None, 0
            ),
            "`strides2` to be a positive int",
        ),
        (
            lambda: compose_depthwise_pointwise(
                np.ones((3, 3, 3, 2)), None, np.ones((3, 3, 6, 4)), None
            ),
            r"`pw` to be a 1x1 kernel of rank 4.*received shape \(3, 3, 6, 4\)",
        ),
        (
            lambda: compose_depthwise_pointwise(
                np.ones((3, 3, 3, 2)), None, np.ones((1, 1, 3, 4)), None
            ),
            r"6 output channels \(3 channels x multiplier 2\) but the second "
            r"expects 3 inputs",
        ),
        (
            lambda: compose_pointwise_depthwise(
                np.ones((1, 1, 2, 3)), None, np.ones((3, 3, 4, 1)), None
            ),
            "3 output channels but the second expects 4 inputs",
        ),
        (
            lambda: compose_pointwise_depthwise(
                np.ones((1, 1, 2, 3)), None, np.ones((3, 3, 3, 2)), np.ones(3)
            ),
            r"`b_dw` of shape \(6,\), received shape \(3,\)",
        ),
        (
            lambda: same_padding_bias_map(np.ones(3), np.ones((3, 3, 3, 2)), (8,), 1),
            r"`spatial_shape` to be a positive int or 2 positive ints",
        ),
        (
            lambda: same_padding_bias_map(np.ones(2), np.ones((3, 3, 3, 2)), 8, 1),
            r"`b1` of shape \(3,\), received shape \(2,\)",
        ),
        (
            lambda: add_identity_shortcut(np.ones((2, 2, 3, 3))),
            r"odd kernel sizes, received kernel\.shape=\(2, 2, 3, 3\)",
        ),
        (
            lambda: add_identity_shortcut(np.ones((3, 3, 3, 4))),
            "as many outputs as inputs",
        ),
        (
            lambda: add_pointwise_shortcut(
                np.ones((3, 3, 3, 4)), None, np.ones((1, 1, 3, 5)), None
            ),
            r"shortcut with 3 inputs and 4 outputs.*\(1, 1, 3, 5\)",
        ),
        (
            lambda: add_pointwise_shortcut(
                np.ones((3, 3, 3, 4)), None, np.ones((3, 3, 3, 4)), None
            ),
            "`sc_kernel` to be a 1x1 kernel",
        ),
        (
            lambda: pad_kernel_to(np.ones((3, 3, 2, 2)), 4),
            r"cannot centre a kernel of shape \(3, 3, 2, 2\) in spatial size \(4, 4\)",
        ),
        (
            lambda: pad_kernel_to(np.ones((5, 5, 2, 2)), (3, 5)),
            "at least the kernel's",
        ),
    ],
)
def test_compose_rejects_bad_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()
