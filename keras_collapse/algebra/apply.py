"""Applying a linear layer's kernel to one fixed tensor, in NumPy.

What a bias map becomes after the next linear layer: `L(y + m) = L(y) + L0(m)`,
with `L0` the layer without its bias and with its own zero padding.
"""

import numpy as np

from keras_collapse.algebra.cost import conv_output_shape
from keras_collapse.algebra.cost import same_padding
from keras_collapse.algebra.fold import as_kernel


def apply_conv(x, kernel, strides, padding, depthwise=False):
    """Cross-correlates one sample with a Keras kernel, no bias.

    Args:
        x: array `[spatial..., channels]`, one sample (no batch axis).
        kernel: ConvND kernel `[k.., channels, out]`, or depthwise
            `[k.., channels, multiplier]` (output channel `c * multiplier + q`).
        strides: tuple of ints, one per spatial axis.
        padding: "valid" or "same" (Keras' split: the smaller half before).
        depthwise: bool, whether `kernel` is depthwise. Defaults to False.

    Returns:
        Float64 array `[out spatial..., out channels]`.

    Raises:
        ValueError: on mismatched ranks or channels, or an unknown padding.
    """
    fn = "apply_conv"
    kernel = as_kernel(kernel, "kernel", fn)
    x = np.asarray(x, dtype="float64")
    rank = kernel.ndim - 2
    if x.ndim != rank + 1 or x.shape[-1] != kernel.shape[-2]:
        raise ValueError(
            f"{fn}: expected x of rank {rank + 1} with {kernel.shape[-2]} channels "
            f"for a kernel of shape {kernel.shape}. Received x of shape {x.shape}"
        )
    spatial, taps = x.shape[:-1], kernel.shape[:-2]
    out = conv_output_shape(spatial, taps, strides, padding)
    if padding == "same":
        pads = [same_padding(n, k, s) for n, k, s in zip(spatial, taps, strides)]
    else:
        pads = [(0, 0)] * rank
    padded = np.pad(x, [*pads, (0, 0)])
    channels = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
    result = np.zeros((*out, channels))
    for tap in np.ndindex(*taps):
        window = tuple(
            slice(t, t + (m - 1) * s + 1, s) for t, m, s in zip(tap, out, strides)
        )
        patch = padded[window]  # [out.., channels]
        if depthwise:
            result += (patch[..., None] * kernel[tap]).reshape(*out, channels)
        else:
            result += patch @ kernel[tap]
    return result
