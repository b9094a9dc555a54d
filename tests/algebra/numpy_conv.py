"""A slow, obviously-correct NumPy convolution used as the tests' oracle.

Cross-correlation as Keras computes it, channels last, any spatial rank;
"same" padding puts the smaller half of the padding before (top/left).
`test_compose.py` checks this oracle against real Keras layers.
"""

import numpy as np


def same_padding(size, kernel_size, stride):
    """Keras/TF "same" padding of one axis as `(before, after)`."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def conv(x, kernel, bias=None, strides=1, padding="valid", depthwise=False):
    """Applies a ConvND (or DepthwiseConvND) to `x` of shape [batch, spatial.., C].

    Args:
        x: array [batch, spatial.., C].
        kernel: array [k.., C, out] or depthwise [k.., C, multiplier].
        bias: array or None.
        strides: int or tuple.
        padding: "valid" or "same".
        depthwise: whether the kernel is depthwise (output c * m + q).

    Returns:
        float64 array [batch, out_spatial.., out_channels].
    """
    x = np.asarray(x, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    rank = kernel.ndim - 2
    sizes = kernel.shape[:-2]
    strides = (strides,) * rank if np.ndim(strides) == 0 else tuple(strides)
    if padding == "same":
        pads = [
            same_padding(n, k, s)
            for n, k, s in zip(x.shape[1:-1], sizes, strides, strict=True)
        ]
        x = np.pad(x, [(0, 0), *pads, (0, 0)])
    out_shape = [
        (n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], sizes, strides, strict=True)
    ]
    taps = kernel.reshape(-1, *kernel.shape[-2:])
    channels_out = taps.shape[1] * taps.shape[2] if depthwise else taps.shape[2]
    y = np.zeros((x.shape[0], *out_shape, channels_out))
    for position in np.ndindex(*out_shape):
        window = tuple(
            slice(p * s, p * s + k)
            for p, s, k in zip(position, strides, sizes, strict=True)
        )
        patch = x[(slice(None), *window)].reshape(x.shape[0], -1, x.shape[-1])
        if depthwise:
            value = np.einsum("btc,tcm->bcm", patch, taps).reshape(x.shape[0], -1)
        else:
            value = np.einsum("btc,tco->bo", patch, taps)
        y[(slice(None), *position)] = value
    return y if bias is None else y + np.asarray(bias, dtype=np.float64)
