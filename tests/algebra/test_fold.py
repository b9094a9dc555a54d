import keras
import numpy as np
import pytest

from keras_collapse.algebra import batchnorm_affine
from keras_collapse.algebra import fold_affine_after
from keras_collapse.algebra import fold_affine_before

from .numpy_conv import conv

# (kernel shape, strides, padding, depthwise, input spatial shape); Dense has
# no spatial axes and is applied as x @ kernel.
LAYERS = [
    ((5, 6), 1, "valid", False, ()),
    ((3, 4, 6), 1, "valid", False, (9,)),
    ((5, 4, 6), 2, "same", False, (10,)),
    ((3, 3, 4, 6), (2, 1), "valid", False, (9, 8)),
    ((5, 5, 4, 6), (2, 2), "same", False, (8, 9)),
    ((3, 3, 4, 2), (1, 1), "valid", True, (7, 7)),
    ((3, 3, 4, 2), (2, 2), "same", True, (8, 7)),
    ((1, 1, 4, 6), (1, 1), "same", False, (5, 5)),
]


def _apply(x, kernel, bias, strides, padding, depthwise):
    if kernel.ndim == 2:
        return x @ kernel + bias
    return conv(x, kernel, bias, strides, padding, depthwise)


def _inputs(rng, kernel_shape, spatial):
    return rng.normal(size=(2, *spatial, kernel_shape[-2]))


def _bn(rng, channels):
    return {
        "gamma": rng.normal(size=channels),
        "beta": rng.normal(size=channels),
        "moving_mean": rng.normal(size=channels),
        "moving_variance": rng.uniform(0.05, 2.0, size=channels),
    }


def _bn_arguments(bn, center, scale, epsilon):
    return (
        bn["gamma"] if scale else None,
        bn["beta"] if center else None,
        bn["moving_mean"],
        bn["moving_variance"],
        epsilon,
    )


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("scale", [True, False])
def test_batchnorm_affine_matches_formula(center, scale):
    rng = np.random.default_rng(0)
    bn = _bn(rng, 6)
    x = rng.normal(size=(10, 6))
    normalized = (x - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3)
    expected = normalized * (bn["gamma"] if scale else 1.0)
    expected += bn["beta"] if center else 0.0

    bn_scale, bn_shift = batchnorm_affine(*_bn_arguments(bn, center, scale, 1e-3))

    np.testing.assert_allclose(x * bn_scale + bn_shift, expected, rtol=0, atol=1e-12)
    assert bn_scale.dtype == np.float64 and bn_shift.dtype == np.float64


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("scale", [True, False])
def test_batchnorm_affine_matches_keras_inference(center, scale):
    rng = np.random.default_rng(1)
    bn = _bn(rng, 5)
    layer = keras.layers.BatchNormalization(center=center, scale=scale, epsilon=0.01)
    layer.build((None, 4, 5))
    keys = ["gamma"] * scale + ["beta"] * center + ["moving_mean", "moving_variance"]
    layer.set_weights([bn[key].astype("float32") for key in keys])
    x = rng.normal(size=(3, 4, 5)).astype("float32")

    expected = keras.ops.convert_to_numpy(layer(x, training=False))
    bn_scale, bn_shift = batchnorm_affine(
        *_bn_arguments(bn, center, scale, layer.epsilon)
    )

    np.testing.assert_allclose(x * bn_scale + bn_shift, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("argument", "value", "match"),
    [
        ("gamma", [1.0, np.nan, 1.0], "finite values in `gamma`"),
        ("beta", [0.0, np.inf, 0.0], "finite values in `beta`"),
        ("moving_mean", [0.0, 0.0, -np.inf], "finite values in `moving_mean`"),
        ("moving_variance", [1.0, np.nan, 1.0], "finite values in `moving_variance`"),
        ("moving_variance", [1.0, -0.5, 1.0], "non-negative `moving_variance`"),
        ("epsilon", np.nan, "finite values in `epsilon`"),
        ("epsilon", 0.0, r"moving_variance \+ epsilon > 0"),
        ("gamma", [1.0, 1.0], r"`gamma` of shape \(3,\), received shape \(2,\)"),
        ("moving_mean", [[0.0, 0.0, 0.0]], "vector `moving_mean`"),
    ],
)
def test_batchnorm_affine_rejects_bad_inputs(argument, value, match):
    arguments = {
        "gamma": [1.0, 2.0, 3.0],
        "beta": [0.0, 1.0, 2.0],
        "moving_mean": [0.0, 0.5, 1.0],
        "moving_variance": [1.0, 0.0, 2.0],
        "epsilon": 1e-3,
    }
    arguments[argument] = value
    with pytest.raises(ValueError, match=match):
        batchnorm_affine(**arguments)


@pytest.mark.parametrize(
    ("shape", "strides", "padding", "depthwise", "spatial"), LAYERS
)
@pytest.mark.parametrize("use_bias", [True, False])
def test_fold_affine_after_is_exact(
    shape, strides, padding, depthwise, spatial, use_bias
):
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=shape)
    channels = shape[-2] * shape[-1] if depthwise else shape[-1]
    bias = rng.normal(size=channels) if use_bias else None
    scale, shift = rng.normal(size=channels), rng.normal(size=channels)
    x = _inputs(rng, shape, spatial)
    zeros = np.zeros(channels)

    expected = _apply(
        x, kernel, bias if use_bias else zeros, strides, padding, depthwise
    )
    expected = expected * scale + shift
    new_kernel, new_bias = fold_affine_after(kernel, bias, scale, shift, depthwise)

    assert new_kernel.shape == kernel.shape
    actual = _apply(x, new_kernel, new_bias, strides, padding, depthwise)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("shape", "strides", "padding", "depthwise", "spatial"),
    [layer for layer in LAYERS if layer[2] == "valid" or layer[0][:-2] == (1, 1)],
)
def test_fold_affine_before_is_exact_without_padding(
    shape, strides, padding, depthwise, spatial
):
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=shape)
    channels = shape[-2] * shape[-1] if depthwise else shape[-1]
    bias = rng.normal(size=channels)
    scale, shift = rng.normal(size=shape[-2]), rng.normal(size=shape[-2])
    x = _inputs(rng, shape, spatial)

    expected = _apply(x * scale + shift, kernel, bias, strides, padding, depthwise)
    new_kernel, new_bias = fold_affine_before(kernel, bias, scale, shift, depthwise)

    actual = _apply(x, new_kernel, new_bias, strides, padding, depthwise)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("depthwise", [False, True])
def test_fold_affine_before_same_padding_is_exact_only_inside(depthwise):
    rng = np.random.default_rng(4)
    kernel = rng.normal(size=(3, 3, 4, 2))
    channels = 8 if depthwise else 2
    scale, shift = rng.normal(size=4), rng.normal(size=4) + 2.0
    x = rng.normal(size=(2, 6, 7, 4))

    expected = conv(x * scale + shift, kernel, None, 1, "same", depthwise)
    new_kernel, new_bias = fold_affine_before(kernel, None, scale, shift, depthwise)
    actual = conv(x, new_kernel, new_bias, 1, "same", depthwise)

    assert actual.shape == (2, 6, 7, channels)
    interior = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(actual[interior], expected[interior], atol=1e-10)
    border_error = np.abs(actual - expected)[:, 0, :].max()
    assert border_error > 1e-3


def test_fold_affine_scale_and_shift_default_to_identity():
    rng = np.random.default_rng(5)
    kernel, bias = rng.normal(size=(3, 4, 5)), rng.normal(size=5)

    for fold in (fold_affine_after, fold_affine_before):
        new_kernel, new_bias = fold(kernel, bias, None, None)
        np.testing.assert_array_equal(new_kernel, kernel)
        np.testing.assert_array_equal(new_bias, bias)


def _keras_conv_bn(layer, bn_scale, bn_center, x):
    inputs = keras.Input(x.shape[1:])
    outputs = keras.layers.BatchNormalization(
        epsilon=1e-3, center=bn_center, scale=bn_scale
    )(layer(inputs))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize(("bn_center", "bn_scale"), [(True, True), (False, False)])
def test_fold_batchnorm_into_keras_conv(depthwise, bn_center, bn_scale):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 8, 7, 3)).astype("float32")
    if depthwise:
        layer = keras.layers.DepthwiseConv2D(3, 2, "same", depth_multiplier=2)
    else:
        layer = keras.layers.Conv2D(4, 3, (2, 1), "same")
    model = _keras_conv_bn(layer, bn_scale, bn_center, x)
    kernel = rng.normal(size=layer.kernel.shape)
    bias = rng.normal(size=layer.bias.shape)
    layer.set_weights([kernel.astype("float32"), bias.astype("float32")])
    bn_layer = model.layers[-1]
    bn = _bn(rng, bias.shape[0])
    keys = ["gamma"] * bn_scale + ["beta"] * bn_center
    keys += ["moving_mean", "moving_variance"]
    bn_layer.set_weights([bn[key].astype("float32") for key in keys])

    expected = keras.ops.convert_to_numpy(model(x, training=False))
    affine = batchnorm_affine(*_bn_arguments(bn, bn_center, bn_scale, 1e-3))
    new_kernel, new_bias = fold_affine_after(kernel, bias, *affine, depthwise)
    folded = layer.__class__.from_config(layer.get_config())
    folded.build(x.shape)
    folded.set_weights([new_kernel.astype("float32"), new_bias.astype("float32")])

    actual = keras.ops.convert_to_numpy(folded(x))
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_fold_batchnorm_before_keras_dense():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 6)).astype("float32")
    bn_layer = keras.layers.BatchNormalization(epsilon=1e-3)
    dense = keras.layers.Dense(3)
    model = keras.Sequential([keras.Input((6,)), bn_layer, dense])
    bn = _bn(rng, 6)
    bn_layer.set_weights([bn[key].astype("float32") for key in bn])
    kernel, bias = rng.normal(size=(6, 3)), rng.normal(size=3)
    dense.set_weights([kernel.astype("float32"), bias.astype("float32")])

    expected = keras.ops.convert_to_numpy(model(x, training=False))
    affine = batchnorm_affine(*_bn_arguments(bn, True, True, 1e-3))
    new_kernel, new_bias = fold_affine_before(kernel, bias, *affine)

    np.testing.assert_allclose(x @ new_kernel + new_bias, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: fold_affine_after(
                np.ones((3, 3, 4, 2)), None, np.ones(2), None, True
            ),
            r"`scale` of shape \(8,\), received shape \(2,\)",
        ),
        (
            lambda: fold_affine_after(np.ones((3, 4, 5)), np.ones(4), None, None),
            r"`bias` of shape \(5,\), received shape \(4,\)",
        ),
        (
            lambda: fold_affine_before(np.ones((3, 4, 5)), None, None, np.ones(5)),
            r"`shift` of shape \(4,\), received shape \(5,\)",
        ),
        (
            lambda: fold_affine_before(np.ones(5), None, None, None),
            r"`kernel` with at least 2 dimensions.*received shape \(5,\)",
        ),
        (
            lambda: fold_affine_after(np.full((2, 2), np.inf), None, None, None),
            "finite values in `kernel`",
        ),
    ],
)
def test_fold_affine_rejects_bad_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()
