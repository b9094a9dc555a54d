"""Multiply-accumulate (MAC) and parameter counts of linear layers from shapes.

A MAC count says how much arithmetic a layer does, not how fast it runs:
depthwise convs, for instance, are far less efficient per MAC than dense ones
on most CPU backends. Kernel shapes use the Keras layouts (Dense `[in, out]`,
ConvND `[k.., in, out]`, DepthwiseConvND `[k.., C, multiplier]`).

Example:

    # 3x3 conv, 16 -> 32 channels, 8x8 output: 9 * 16 * 32 * 64 MACs.
    conv_macs((3, 3, 16, 32), (8, 8))  # 294912
"""

import math

import numpy as np


def _ints(value, name, fn, rank=None):
    """Returns a shape as a tuple of positive ints, optionally of `rank`."""
    values = (value,) * (rank or 1) if np.ndim(value) == 0 else tuple(value)
    if (rank is not None and len(values) != rank) or any(
        int(v) != v or v < 1 for v in values
    ):
        expected = f"{rank} positive ints" if rank is not None else "positive ints"
        raise ValueError(f"{fn}: expected `{name}` as {expected}, received {value!r}.")
    return tuple(int(v) for v in values)


def same_padding(size, kernel_size, stride):
    """`(before, after)`: Keras' "same" zero padding of one axis.

    `out = ceil(size / stride)`; the total is `max((out - 1) * stride +
    kernel_size - size, 0)`, the smaller half before (top/left).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def taps_inside(size, kernel_size, stride):
    """Bool `[out, kernel_size]`: whether each tap of each output position of
    a "same" conv reads inside the image along one axis (else padding)."""
    out = -(-size // stride)
    before, _ = same_padding(size, kernel_size, stride)
    read = np.arange(out)[:, None] * stride - before + np.arange(kernel_size)
    return (read >= 0) & (read < size)


def conv_output_shape(input_spatial, kernel_spatial, strides, padding):
    """Spatial output shape of a Keras convolution.

    "valid": `floor((n - k) / s) + 1`; "same": `ceil(n / s)`.

    Args:
        input_spatial: tuple of ints. Input spatial shape.
        kernel_spatial: int or tuple of ints. Kernel spatial size.
        strides: int or tuple of ints. Strides.
        padding: str. "valid" or "same".

    Returns:
        Tuple of ints.

    Raises:
        ValueError: on an unknown padding, mismatched ranks, or a "valid"
            kernel larger than the input.
    """
    fn = "conv_output_shape"
    sizes = _ints(input_spatial, "input_spatial", fn)
    kernel = _ints(kernel_spatial, "kernel_spatial", fn, len(sizes))
    strides = _ints(strides, "strides", fn, len(sizes))
    if padding == "same":
        return tuple(-(-n // s) for n, s in zip(sizes, strides, strict=True))
    if padding != "valid":
        raise ValueError(
            f'{fn}: expected padding "valid" or "same", received {padding!r}.'
        )
    if any(k > n for n, k in zip(sizes, kernel, strict=True)):
        raise ValueError(
            f"{fn}: a kernel of size {kernel} does not fit in an input of size "
            f'{sizes} with "valid" padding.'
        )
    return tuple(
        (n - k) // s + 1 for n, k, s in zip(sizes, kernel, strides, strict=True)
    )


def conv_macs(kernel_shape, output_spatial_shape, depthwise=False):
    """MACs of a convolution: every kernel weight once per output position.

    That is `prod(k) * in * out * prod(output)` for ConvND and
    `prod(k) * C * multiplier * prod(output)` for DepthwiseConvND: the same
    product of the kernel shape, so `depthwise` only documents the layout.

    Args:
        kernel_shape: tuple of ints. Kernel shape `[k.., in, out]` or
            depthwise `[k.., C, multiplier]`.
        output_spatial_shape: tuple of ints. Output spatial shape, per sample.
        depthwise: bool. Whether the kernel is depthwise. Defaults to False.

    Returns:
        int.

    Raises:
        ValueError: if the output rank differs from the kernel's spatial rank.
    """
    fn = "conv_macs"
    kernel_shape = _ints(kernel_shape, "kernel_shape", fn)
    if len(kernel_shape) < 2:
        raise ValueError(
            f"{fn}: expected `kernel_shape` [k.., in, out], received {kernel_shape}."
        )
    output = _ints(
        output_spatial_shape, "output_spatial_shape", fn, len(kernel_shape) - 2
    )
    return math.prod(kernel_shape) * math.prod(output)


def dense_macs(kernel_shape, leading_positions=1):
    """MACs of a Dense layer: `in * out` per position.

    Args:
        kernel_shape: tuple `(in, out)`.
        leading_positions: int. Number of vectors the layer is applied to per
            sample (e.g. tokens of a sequence). Defaults to 1.

    Returns:
        int.

    Raises:
        ValueError: on a malformed shape.
    """
    fn = "dense_macs"
    kernel_shape = _ints(kernel_shape, "kernel_shape", fn, 2)
    (positions,) = _ints(leading_positions, "leading_positions", fn, 1)
    return math.prod(kernel_shape) * positions


def conv_params(kernel_shape, use_bias=True, depthwise=False):
    """Parameter count of a ConvND or DepthwiseConvND layer.

    Args:
        kernel_shape: tuple of ints. Kernel shape.
        use_bias: bool. Whether the layer has a bias. Defaults to True.
        depthwise: bool. Whether the kernel is depthwise, which has
            `C * multiplier` biases. Defaults to False.

    Returns:
        int.

    Raises:
        ValueError: on a malformed shape.
    """
    fn = "conv_params"
    kernel_shape = _ints(kernel_shape, "kernel_shape", fn)
    if len(kernel_shape) < 2:
        raise ValueError(
            f"{fn}: expected `kernel_shape` [k.., in, out], received {kernel_shape}."
        )
    outputs = math.prod(kernel_shape[-2:]) if depthwise else kernel_shape[-1]
    return math.prod(kernel_shape) + (outputs if use_bias else 0)


def dense_params(kernel_shape, use_bias=True):
    """Parameter count of a Dense layer.

    Args:
        kernel_shape: tuple `(in, out)`.
        use_bias: bool. Whether the layer has a bias. Defaults to True.

    Returns:
        int.

    Raises:
        ValueError: on a malformed shape.
    """
    kernel_shape = _ints(kernel_shape, "kernel_shape", "dense_params", 2)
    return math.prod(kernel_shape) + (kernel_shape[1] if use_bias else 0)


def einsum_macs(equation, kernel_shape, output_shape):
    """Multiply-accumulates per sample of an `EinsumDense` (one input, one
    kernel): every output entry sums over the kernel's contracted axes.

    Args:
        equation: str, e.g. "abc,cd->abd" (the first operand is the input).
        kernel_shape: the kernel's shape.
        output_shape: the output's shape without the batch axis.

    Example:

    >>> from keras_collapse.algebra import einsum_macs
    >>> einsum_macs("abc,cd->abd", (16, 32), (10, 32))  # 10 tokens
    5120
    """
    operands, output = equation.replace(" ", "").split("->")
    _, kernel = operands.split(",")
    if "." in equation or len(kernel) != len(kernel_shape):
        raise ValueError(
            f"Expected an einsum equation without ellipsis whose kernel term "
            f"matches kernel_shape {tuple(kernel_shape)}. Received: {equation!r}"
        )
    contracted = [int(d) for axis, d in zip(kernel, kernel_shape) if axis not in output]
    return int(math.prod(output_shape) * math.prod(contracted))


def attention_macs(
    query_shape, value_shape, key_shape, num_heads, key_dim, value_dim, output_dim
):
    """Multiply-accumulates per sample of a `MultiHeadAttention` call: the
    query, key, value and output projections and the two attention products
    (scores Q K^T, and scores times V).

    Args:
        query_shape, value_shape, key_shape: shapes without the batch axis,
            `(tokens..., features)`.
        num_heads, key_dim, value_dim: the layer's sizes.
        output_dim: the output projection's features.

    Example:

    >>> from keras_collapse.algebra import attention_macs
    >>> attention_macs((10, 16), (10, 16), (10, 16), 2, 8, 8, 16)
    13440
    """
    tq, dq = math.prod(query_shape[:-1]), query_shape[-1]
    tv, dv = math.prod(value_shape[:-1]), value_shape[-1]
    tk, dk = math.prod(key_shape[:-1]), key_shape[-1]
    projections = (
        tq * dq * num_heads * key_dim
        + tk * dk * num_heads * key_dim
        + tv * dv * num_heads * value_dim
        + tq * num_heads * value_dim * output_dim
    )
    products = num_heads * tq * tk * key_dim + num_heads * tq * tv * value_dim
    return int(projections + products)
