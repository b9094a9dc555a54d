"""Folding per-channel affine maps (inference-mode BatchNormalization) into layers.

Kernels use the Keras layouts: Dense `[in, out]`, ConvND `[k1..kN, in, out]`,
DepthwiseConvND `[k1..kN, channels, multiplier]`, whose output channel
`c * multiplier + q` is computed by `kernel[..., c, q]`. Everything is computed
and returned in float64; callers cast to the layer dtype.
"""

import numpy as np


def _array(value, name, fn):
    """Returns `value` as a float64 array, rejecting NaN and infinity."""
    array = np.asarray(value, dtype=np.float64)
    bad = np.size(array) - np.count_nonzero(np.isfinite(array))
    if bad:
        raise ValueError(
            f"{fn}: expected finite values in `{name}`, received {bad} non-finite "
            f"value(s) in an array of shape {array.shape}."
        )
    return array


def as_vector(value, length, name, fn, default=0.0):
    """Returns `value` as a float64 vector of `length`; None gives `default`s."""
    if value is None:
        return np.full(length, default)
    vector = _array(value, name, fn)
    if vector.shape != (length,):
        raise ValueError(
            f"{fn}: expected `{name}` of shape ({length},), received shape "
            f"{vector.shape}."
        )
    return vector


def as_kernel(value, name, fn, ndim=None):
    """Returns a kernel as float64, checking it has channel axes (and `ndim`)."""
    kernel = _array(value, name, fn)
    if kernel.ndim < 2 or (ndim is not None and kernel.ndim != ndim):
        expected = f"{ndim} dimensions" if ndim else "at least 2 dimensions"
        raise ValueError(
            f"{fn}: expected `{name}` with {expected} (Keras layout "
            f"[spatial..., in, out]), received shape {kernel.shape}."
        )
    return kernel


def _out_channels(kernel, depthwise):
    return kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]


def through_taps(kernel, vector, depthwise=False):
    """Returns the layer's response (without bias) to a constant input `vector`.

    That is the sum over all taps t of `kernel[t]^T vector`, one value per
    output channel.
    """
    taps = kernel.reshape(-1, *kernel.shape[-2:])
    if depthwise:
        return np.einsum("tcq,c->cq", taps, vector).reshape(-1)
    return np.einsum("tio,i->o", taps, vector)


def batchnorm_affine(gamma, beta, moving_mean, moving_variance, epsilon):
    """Turns inference-mode BatchNormalization into a per-channel affine map.

    `gamma * (x - mean) / sqrt(variance + epsilon) + beta == x * scale + shift`.

    Args:
        gamma: array or None. Per-channel scale; None for `scale=False`.
        beta: array or None. Per-channel offset; None for `center=False`.
        moving_mean: array. Per-channel moving mean.
        moving_variance: array. Per-channel moving variance, non-negative.
        epsilon: float. The layer's epsilon (Keras defaults to 1e-3).

    Returns:
        Tuple `(scale, shift)` of float64 vectors.

    Raises:
        ValueError: if an input is not finite, the shapes differ, a variance
            is negative, or `moving_variance + epsilon` is not positive.
    """
    fn = "batchnorm_affine"
    mean = _array(moving_mean, "moving_mean", fn)
    if mean.ndim != 1:
        raise ValueError(
            f"{fn}: expected a vector `moving_mean`, received shape {mean.shape}."
        )
    channels = mean.shape[0]
    variance = as_vector(moving_variance, channels, "moving_variance", fn)
    if np.any(variance < 0):
        raise ValueError(
            f"{fn}: expected non-negative `moving_variance`, received minimum "
            f"{variance.min()}."
        )
    epsilon = float(_array(epsilon, "epsilon", fn))
    denominator = variance + epsilon
    if np.any(denominator <= 0):
        raise ValueError(
            f"{fn}: expected `moving_variance + epsilon > 0`, received "
            f"epsilon={epsilon} and minimum variance {variance.min()}."
        )
    gamma = as_vector(gamma, channels, "gamma", fn, default=1.0)
    scale = gamma / np.sqrt(denominator)
    shift = as_vector(beta, channels, "beta", fn) - mean * scale
    return scale, shift


def fold_affine_after(kernel, bias, scale, shift, depthwise=False):
    """Folds a per-output-channel `y * scale + shift` into the layer before it.

    Exact for any padding and stride: the affine map acts on every output
    position alike.

    Args:
        kernel: array. Dense, ConvND or (with `depthwise=True`) depthwise kernel.
        bias: array or None. The layer bias; None means no bias (zeros).
        scale: array or None. One value per output channel (`C * multiplier`
            for a depthwise kernel); None means ones.
        shift: array or None. One value per output channel; None means zeros.
        depthwise: bool. Whether `kernel` is `[k.., C, multiplier]`.
            Defaults to False.

    Returns:
        Tuple `(kernel, bias)` of the folded layer, float64.

    Raises:
        ValueError: on non-finite values or mismatched shapes.
    """
    fn = "fold_affine_after"
    kernel = as_kernel(kernel, "kernel", fn)
    channels = _out_channels(kernel, depthwise)
    bias = as_vector(bias, channels, "bias", fn)
    scale = as_vector(scale, channels, "scale", fn, default=1.0)
    shift = as_vector(shift, channels, "shift", fn)
    kernel_scale = scale.reshape(kernel.shape[-2:]) if depthwise else scale
    return kernel * kernel_scale, bias * scale + shift


def fold_affine_before(kernel, bias, scale, shift, depthwise=False):
    """Folds a per-input-channel `x * scale + shift` into the layer after it.

    Exact for Dense and for "valid" convolutions. With zero "same" padding it
    is exact only in the interior: the original layer sees padded zeros where
    the folded one sees the zeros that `x * scale + shift` would have mapped
    to `shift`, so the border differs whenever `shift` is non-zero. The caller
    decides when this fold is allowed.

    Args:
        kernel: array. Dense, ConvND or (with `depthwise=True`) depthwise kernel.
        bias: array or None. The layer bias; None means no bias (zeros).
        scale: array or None. One value per input channel; None means ones.
        shift: array or None. One value per input channel; None means zeros.
        depthwise: bool. Whether `kernel` is `[k.., C, multiplier]`.
            Defaults to False.

    Returns:
        Tuple `(kernel, bias)` of the folded layer, float64.

    Raises:
        ValueError: on non-finite values or mismatched shapes.
    """
    fn = "fold_affine_before"
    kernel = as_kernel(kernel, "kernel", fn)
    channels = kernel.shape[-2]
    bias = as_vector(bias, _out_channels(kernel, depthwise), "bias", fn)
    scale = as_vector(scale, channels, "scale", fn, default=1.0)
    shift = as_vector(shift, channels, "shift", fn)
    # The constant shift reaches every tap, so it adds a constant per output.
    bias = bias + through_taps(kernel, shift, depthwise)
    return kernel * scale[:, None], bias
