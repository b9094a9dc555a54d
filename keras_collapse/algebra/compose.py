"""Composing two linear layers into one, and adding shortcuts into a kernel.

Kernels use the Keras layouts: Dense `[in, out]`, ConvND `[k1..kN, in, out]`,
DepthwiseConvND `[k1..kN, channels, multiplier]` (output channel
`c * multiplier + q`). Convolutions are cross-correlations, as Keras computes
them. Everything is computed and returned in float64.

Exactness, for a composed layer used with the stated padding:

| function                      | "valid" | "same"                             |
|-------------------------------|---------|------------------------------------|
| `compose_dense`               | exact   | (no padding)                       |
| `compose_conv`                | exact   | interior only                      |
| `compose_depthwise_pointwise` | exact   | exact                              |
| `compose_pointwise_depthwise` | exact   | exact with `same_padding_bias_map` |
"""

import numpy as np

from keras_collapse.algebra.cost import taps_inside
from keras_collapse.algebra.fold import as_kernel
from keras_collapse.algebra.fold import as_vector
from keras_collapse.algebra.fold import through_taps


def _shape(kernel):
    return tuple(int(size) for size in kernel.shape)


def _tuple(value, rank, name, fn):
    """Returns an int or a sequence of `rank` positive ints as a tuple."""
    values = (value,) * rank if np.ndim(value) == 0 else tuple(value)
    if len(values) != rank or any(int(v) != v or v < 1 for v in values):
        raise ValueError(
            f"{fn}: expected `{name}` to be a positive int or {rank} positive "
            f"ints, received {value!r}."
        )
    return tuple(int(v) for v in values)


def _check_chain(k1, k2, produced, fn, detail=""):
    """Checks that `k2` consumes the `produced` channels of `k1`."""
    if k2.shape[-2] != produced:
        raise ValueError(
            f"{fn}: the first kernel has {produced} output channels{detail} but "
            f"the second expects {k2.shape[-2]} inputs. Received "
            f"shapes {_shape(k1)} and {_shape(k2)}."
        )


def _check_pointwise(kernel, ndim, name, fn):
    if kernel.ndim != ndim or any(size != 1 for size in kernel.shape[:-2]):
        raise ValueError(
            f"{fn}: expected `{name}` to be a 1x1 kernel of rank {ndim} "
            f"(shape [1, ..., in, out]), received shape {_shape(kernel)}."
        )


def compose_dense(k1, b1, k2, b2):
    """Composes `Dense(k1, b1)` then `Dense(k2, b2)` into one Dense.

    Args:
        k1: array `[in, hidden]`. First kernel.
        b1: array or None. First bias.
        k2: array `[hidden, out]`. Second kernel.
        b2: array or None. Second bias.

    Returns:
        Tuple `(kernel, bias)`: `k1 @ k2` and `b1 @ k2 + b2`.

    Raises:
        ValueError: on mismatched shapes.
    """
    fn = "compose_dense"
    k1 = as_kernel(k1, "k1", fn, ndim=2)
    k2 = as_kernel(k2, "k2", fn, ndim=2)
    if k1.shape[1] != k2.shape[0]:
        raise ValueError(
            f"{fn}: k1 has {k1.shape[1]} output units but k2 expects "
            f"{k2.shape[0]} inputs. Received k1.shape={_shape(k1)}, "
            f"k2.shape={_shape(k2)}."
        )
    b1 = as_vector(b1, k1.shape[1], "b1", fn)
    b2 = as_vector(b2, k2.shape[1], "b2", fn)
    return k1 @ k2, b1 @ k2 + b2


def compose_conv(k1, b1, strides1, k2, b2, strides2):
    """Composes two "valid" convolutions into one "valid" convolution.

    Tap `a` of the second conv reads the first conv's output `a` positions
    later, which is `a * s1` input positions later; so the merged kernel has
    size `k1 + (k2 - 1) * s1` per axis and stride `s1 * s2`. Exact with
    "valid" padding; with "same" padding only the interior matches. To
    compose with a depthwise kernel, use the dedicated functions below.

    Args:
        k1: array `[k1.., in, hidden]`. First kernel.
        b1: array or None. First bias.
        strides1: int or tuple of ints. First strides.
        k2: array `[k2.., hidden, out]`. Second kernel, same spatial rank.
        b2: array or None. Second bias.
        strides2: int or tuple of ints. Second strides.

    Returns:
        Tuple `(kernel, bias, strides)` of the merged convolution.

    Raises:
        ValueError: on mismatched ranks, channels or strides.
    """
    fn = "compose_conv"
    k1 = as_kernel(k1, "k1", fn)
    k2 = as_kernel(k2, "k2", fn, ndim=k1.ndim)
    _check_chain(k1, k2, k1.shape[-1], fn)
    rank = k1.ndim - 2
    s1 = _tuple(strides1, rank, "strides1", fn)
    s2 = _tuple(strides2, rank, "strides2", fn)
    b1 = as_vector(b1, k1.shape[-1], "b1", fn)
    b2 = as_vector(b2, k2.shape[-1], "b2", fn)
    size1 = k1.shape[:-2]
    merged = [a + (b - 1) * s for a, b, s in zip(size1, k2.shape[:-2], s1, strict=True)]
    kernel = np.zeros((*merged, k1.shape[-2], k2.shape[-1]))
    for tap in np.ndindex(*k2.shape[:-2]):
        window = tuple(
            slice(a * s, a * s + k) for a, s, k in zip(tap, s1, size1, strict=True)
        )
        kernel[window] += k1 @ k2[tap]
    bias = b2 + through_taps(k2, b1)
    return kernel, bias, tuple(a * b for a, b in zip(s1, s2, strict=True))


def compose_depthwise_pointwise(dw, b_dw, pw, b_pw):
    """Composes a depthwise conv then a 1x1 conv into one dense conv.

    `kernel[..., c, o] = sum_q dw[..., c, q] * pw[c * m + q, o]`. Exact for
    any padding (only the depthwise conv pads) with the depthwise strides;
    the 1x1 conv must have stride 1.

    Args:
        dw: array `[k.., C, m]`. Depthwise kernel.
        b_dw: array or None. Depthwise bias, `C * m` values.
        pw: array `[1.., C * m, O]`. Pointwise kernel, same spatial rank.
        b_pw: array or None. Pointwise bias.

    Returns:
        Tuple `(kernel, bias)`: kernel `[k.., C, O]`.

    Raises:
        ValueError: on mismatched shapes.
    """
    fn = "compose_depthwise_pointwise"
    dw = as_kernel(dw, "dw", fn)
    pw = as_kernel(pw, "pw", fn)
    _check_pointwise(pw, dw.ndim, "pw", fn)
    channels, multiplier = dw.shape[-2:]
    detail = f" ({channels} channels x multiplier {multiplier})"
    _check_chain(dw, pw, channels * multiplier, fn, detail)
    b_dw = as_vector(b_dw, channels * multiplier, "b_dw", fn)
    b_pw = as_vector(b_pw, pw.shape[-1], "b_pw", fn)
    matrix = pw.reshape(channels * multiplier, -1)
    kernel = np.einsum("...cq,cqo->...co", dw, matrix.reshape(channels, multiplier, -1))
    return kernel, b_dw @ matrix + b_pw


def compose_pointwise_depthwise(pw, b_pw, dw, b_dw):
    """Composes a 1x1 conv then a depthwise conv into one dense conv.

    `kernel[..., i, c * m + q] = pw[i, c] * dw[..., c, q]`. Exact with "valid"
    padding. With "same" padding the original depthwise conv pads the 1x1
    output with zeros where the merged conv would see `b_pw`: compose with
    `b_pw=None` and add `same_padding_bias_map(b_pw, dw, ..., depthwise=True)`
    to restore exactness. The 1x1 conv must have stride 1.

    Args:
        pw: array `[1.., Cin, C]`. Pointwise kernel.
        b_pw: array or None. Pointwise bias.
        dw: array `[k.., C, m]`. Depthwise kernel, same spatial rank.
        b_dw: array or None. Depthwise bias, `C * m` values.

    Returns:
        Tuple `(kernel, bias)`: kernel `[k.., Cin, C * m]`.

    Raises:
        ValueError: on mismatched shapes.
    """
    fn = "compose_pointwise_depthwise"
    pw = as_kernel(pw, "pw", fn)
    dw = as_kernel(dw, "dw", fn)
    _check_pointwise(pw, dw.ndim, "pw", fn)
    _check_chain(pw, dw, pw.shape[-1], fn)
    channels, multiplier = dw.shape[-2:]
    b_pw = as_vector(b_pw, channels, "b_pw", fn)
    b_dw = as_vector(b_dw, channels * multiplier, "b_dw", fn)
    matrix = pw.reshape(-1, channels)
    kernel = np.einsum("ic,...cq->...icq", matrix, dw)
    kernel = kernel.reshape(*dw.shape[:-2], matrix.shape[0], channels * multiplier)
    return kernel, b_dw + through_taps(dw, b_pw, depthwise=True)


def same_padding_bias_map(b1, k2, spatial_shape, strides2, depthwise=False):
    """Bias map that makes 1x1 (bias `b1`) -> "same" conv `k2` merges exact.

    Outside the image the 1x1 output would be the constant `b1`, but the
    second conv pads with zeros, so output position `p` only receives
    `B(p) = sum of k2[t]^T b1 over the taps t that read inside the image`.
    Hence, for an input `x` of the given spatial shape,

        conv_same(conv_1x1(x, w1) + b1, k2) + b2
            == conv_same(x, kernel) + b2 + B

    where `kernel` comes from `compose_pointwise_depthwise(w1, None, k2, b2)`
    (depthwise `k2`) or `compose_conv(w1, None, 1, k2, b2, strides2)`, both of
    which return the bias `b2` when `b1` is None.

    Args:
        b1: array. Bias of the 1x1 conv (e.g. including a folded BN shift).
        k2: array. Kernel of the second conv, `[k.., C, O]` or depthwise
            `[k.., C, m]`.
        spatial_shape: tuple of ints. Spatial shape of the input (static).
        strides2: int or tuple of ints. Strides of the second conv.
        depthwise: bool. Whether `k2` is a depthwise kernel. Defaults to False.

    Returns:
        Float64 array `[out_spatial..., O]` (`O = C * m` when depthwise), to add
        to the merged conv's output.

    Raises:
        ValueError: on mismatched shapes.
    """
    fn = "same_padding_bias_map"
    k2 = as_kernel(k2, "k2", fn)
    rank = k2.ndim - 2
    spatial_shape = _tuple(spatial_shape, rank, "spatial_shape", fn)
    strides = _tuple(strides2, rank, "strides2", fn)
    b1 = as_vector(b1, k2.shape[-2], "b1", fn)
    if depthwise:
        bias_map = (k2 * b1[:, None]).reshape(*k2.shape[:-2], -1)
    else:
        bias_map = np.einsum("...co,c->...o", k2, b1)
    # Replace each tap axis by an output axis, summing the taps inside.
    for axis, (size, stride) in enumerate(zip(spatial_shape, strides, strict=True)):
        inside = taps_inside(size, k2.shape[axis], stride).astype(np.float64)
        bias_map = np.moveaxis(np.tensordot(inside, bias_map, ([1], [axis])), 0, axis)
    return bias_map


def pad_kernel_to(kernel, size):
    """Zero-pads a kernel's spatial axes symmetrically to `size`.

    With "same" padding and stride 1, the padded kernel computes the same
    function (e.g. a 1x1 placed at the centre of a 3x3).

    Args:
        kernel: array `[k.., in, out]` (or depthwise `[k.., C, m]`).
        size: int or tuple of ints. Target spatial size, each at least the
            kernel's and differing from it by an even number.

    Returns:
        Float64 array `[size.., in, out]`.

    Raises:
        ValueError: if a size is smaller or differs by an odd number.
    """
    fn = "pad_kernel_to"
    kernel = as_kernel(kernel, "kernel", fn)
    target = _tuple(size, kernel.ndim - 2, "size", fn)
    pads = []
    for current, wanted in zip(kernel.shape[:-2], target, strict=True):
        if wanted < current or (wanted - current) % 2:
            raise ValueError(
                f"{fn}: cannot centre a kernel of shape {_shape(kernel)} in "
                f"spatial size {target}: each size must be at least the "
                f"kernel's and differ from it by an even number."
            )
        pads.append(((wanted - current) // 2,) * 2)
    return np.pad(kernel, pads + [(0, 0), (0, 0)])


def _add_at_centre(kernel, bias, sc_kernel, sc_bias, fn):
    if any(size % 2 == 0 for size in kernel.shape[:-2]):
        raise ValueError(
            f"{fn}: a centre tap needs odd kernel sizes, received "
            f"kernel.shape={_shape(kernel)}."
        )
    if sc_kernel.shape[-2:] != kernel.shape[-2:]:
        raise ValueError(
            f"{fn}: expected a shortcut with {kernel.shape[-2]} inputs and "
            f"{kernel.shape[-1]} outputs like the kernel, received "
            f"kernel.shape={_shape(kernel)}, shortcut shape {_shape(sc_kernel)}."
        )
    bias = as_vector(bias, kernel.shape[-1], "bias", fn)
    sc_bias = as_vector(sc_bias, kernel.shape[-1], "sc_bias", fn)
    return kernel + pad_kernel_to(sc_kernel, kernel.shape[:-2]), bias + sc_bias


def add_identity_shortcut(kernel, bias=None):
    """Adds an identity residual `y = conv(x) + x` into the kernel.

    Puts a Dirac (identity matrix) at the centre tap. Exact for stride 1 with
    "same" padding, and for Dense kernels `[n, n]`.

    Args:
        kernel: array `[k.., C, C]` with odd spatial sizes.
        bias: array or None. The layer bias, unchanged (None gives zeros).

    Returns:
        Tuple `(kernel, bias)`, float64.

    Raises:
        ValueError: if input and output channels differ or a size is even.
    """
    fn = "add_identity_shortcut"
    kernel = as_kernel(kernel, "kernel", fn)
    channels = kernel.shape[-2]
    if kernel.shape[-1] != channels:
        raise ValueError(
            f"{fn}: an identity shortcut needs as many outputs as inputs, "
            f"received kernel.shape={_shape(kernel)}."
        )
    identity = np.eye(channels).reshape((1,) * (kernel.ndim - 2) + (channels,) * 2)
    return _add_at_centre(kernel, bias, identity, None, fn)


def add_pointwise_shortcut(kernel, bias, sc_kernel, sc_bias):
    """Adds a 1x1-conv residual `y = conv(x) + conv_1x1(x)` into the kernel.

    Exact for stride 1 with "same" padding. With stride 2 "same" padding, the
    centre tap and the 1x1 read the same pixels only for odd input sizes: for
    even sizes Keras pads the k x k conv more after than before, so its centre
    tap reads one pixel later than the unpadded 1x1.

    Args:
        kernel: array `[k.., in, out]` with odd spatial sizes.
        bias: array or None. The layer bias.
        sc_kernel: array `[1.., in, out]`. Shortcut kernel, same rank.
        sc_bias: array or None. Shortcut bias.

    Returns:
        Tuple `(kernel, bias)`, float64.

    Raises:
        ValueError: on mismatched shapes or even kernel sizes.
    """
    fn = "add_pointwise_shortcut"
    kernel = as_kernel(kernel, "kernel", fn)
    sc_kernel = as_kernel(sc_kernel, "sc_kernel", fn)
    _check_pointwise(sc_kernel, kernel.ndim, "sc_kernel", fn)
    return _add_at_centre(kernel, bias, sc_kernel, sc_bias, fn)
