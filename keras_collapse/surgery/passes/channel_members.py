"""What each node is to a channel group (`passes/dead_channels`): a member
that ties its input and output channels, a Conv/Dense/DepthwiseConv whose
channels can be cut, or neither; and the cutting of a node's channels."""

import dataclasses

import keras
import numpy as np

from keras_collapse.graph import Ref
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite

# Activations that mix channels: cutting one changes the others.
_NOT_ELEMENTWISE = ("softmax", "log_softmax", "glu", "sparsemax")
_ACTIVATION_LAYERS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
)
# Merges whose output is zero where every input is.
_MERGES = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
)
# Act on each channel alone and keep an all-zero channel all zero.
_ZERO_KEEPING = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
)


@dataclasses.dataclass
class Linear:
    """Kernel and bias of a Conv/Dense/DepthwiseConv node, in its own dtype."""

    kernel: np.ndarray
    bias: np.ndarray
    depthwise: bool

    @property
    def zero_kernel(self):
        """Per output channel (depthwise: input channel * multiplier + j)."""
        axes = tuple(range(self.kernel.ndim - (2 if self.depthwise else 1)))
        return np.all(self.kernel == 0, axis=axes).reshape(-1)

    @property
    def zero_bias(self):
        return self.bias == 0


def linear_parts(node):
    """`Linear` of a stock Conv/Dense/DepthwiseConv node, or None."""
    layer = node.layer
    depthwise = kinds.is_depthwise(layer)
    if node.is_input or not (
        kinds.is_conv(layer) or kinds.is_dense(layer) or depthwise
    ):
        return None
    weights = weights_of(node)
    if len(weights) != 1 + bool(layer.use_bias):  # e.g. a quantized layer
        return None
    kernel = np.asarray(weights[0])
    outputs = kernel.shape[-1] * (kernel.shape[-2] if depthwise else 1)
    if layer.use_bias:
        bias = np.asarray(weights[1])
    else:
        bias = np.zeros(outputs, kernel.dtype)
    if bias.shape != (outputs,) or channels(node.shapes) != outputs:
        return None
    return Linear(kernel, bias, depthwise)


def weights_of(node):
    if node.weights is not None:
        return list(node.weights)
    layer = node.layer
    return layer.get_weights() if isinstance(layer, keras.layers.Layer) else []


def channels(shapes):
    """The channel count (last axis) of a single-output node, or None."""
    if len(shapes) != 1 or not shapes[0]:
        return None
    size = shapes[0][-1]
    return size if isinstance(size, int) else None


def member_kind(graph, node):
    """How a node ties its input and output channels: "merge" (an Add...),
    "activation" (keeps zero where it maps 0 to 0), "channelwise" (always
    keeps zero), or None (not a member of any channel group)."""
    refs = node.input_refs
    size = channels(node.shapes)
    if node.is_input or size is None or not refs:
        return None
    in_shapes = [graph.producer(r).shapes[r.index] for r in refs]
    if _is_merge(node):
        same = all(tuple(s) == tuple(node.shape) for s in in_shapes)
        return "merge" if same else None
    if len(refs) != 1 or not node.args or node.args[0] != refs[0]:
        return None
    if not in_shapes[0] or in_shapes[0][-1] != size:
        return None
    layer = node.layer
    if kinds.is_identity_at_inference(node):
        return "channelwise"
    if type(layer) in _ZERO_KEEPING:
        data_format = getattr(layer, "data_format", "channels_last")
        return "channelwise" if data_format == "channels_last" else None
    if _is_activation(layer):
        return "activation"
    return None


def _is_merge(node):
    layer = node.layer
    if type(layer) in _MERGES:
        return True
    # The raw `x + y` op: two tensors, no broadcasting (checked by the caller).
    return (
        not isinstance(layer, keras.layers.Layer)
        and type(layer).__name__ == "Add"
        and len(node.args) == 2
        and all(isinstance(a, Ref) for a in node.args)
        and not node.kwargs
    )


def _is_activation(layer):
    if kinds.is_collapsible(layer):
        return True
    if type(layer) is keras.layers.Activation:
        return is_elementwise(layer.activation)
    if type(layer) in _ACTIVATION_LAYERS:
        return True
    return (
        not isinstance(layer, keras.layers.Layer)
        and type(layer).__name__ in kinds.OP_ACTIVATIONS
    )


def is_elementwise(fn):
    """A stock Keras activation that acts on each value alone."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or name in _NOT_ELEMENTWISE:
        return False
    return getattr(keras.activations, name, None) is fn


def zero_at_zero(fn):
    if not is_elementwise(fn):
        return False
    return bool(np.all(keras.ops.convert_to_numpy(fn(keras.ops.zeros((1, 1)))) == 0))


def keeps_zero(node, size):
    """Per channel: whether an activation node maps an all-zero channel to 0."""
    # Evaluated, not assumed: e.g. ReLU(threshold=1, negative_slope=0.1) gives
    # -0.1 at 0, a collapsible sigmoid gives (1 - alpha) / 2.
    shape = (1,) + tuple(1 if d is None else d for d in node.shape[1:])
    zeros = keras.ops.zeros(shape)

    def fill(x):
        return zeros if isinstance(x, Ref) else x

    out = node.layer(
        *keras.tree.map_structure(fill, node.args),
        **keras.tree.map_structure(fill, node.kwargs),
    )
    out = keras.ops.convert_to_numpy(out).reshape(-1, size)
    return np.all(out == 0, axis=0)


def name_of(node):
    return getattr(node.layer, "name", None) or type(node.layer).__name__


def describe(node):
    return f"'{name_of(node)}' ({type(node.layer).__name__})"


def slice_member(graph, node, size, keep):
    """Slices the per-channel weights (alpha) of a channel-wise layer."""
    weights = weights_of(node)
    if not any(np.ndim(w) and np.shape(w)[-1] == size != 1 for w in weights):
        return
    sliced = [
        np.asarray(w)[..., keep] if np.ndim(w) and np.shape(w)[-1] == size else w
        for w in weights
    ]
    layer = rewrite.reconfigure(graph, node, {}, sliced)
    # Built now: later passes read its state (a collapsible's alpha and lock).
    source = node.input_refs[0]
    shape = list(graph.producer(source).shapes[source.index])
    shape[-1] = len(keep)
    layer.build(tuple(shape))
    layer.set_weights(node.weights)


def slice_linear(graph, node, parts, keep_in, keep_out):
    """Replaces a Conv/Dense/DepthwiseConv node's layer by a narrower one."""
    kernel, bias = parts.kernel, parts.bias
    changes = {}
    if keep_in is not None:
        kernel = kernel[..., keep_in, :]
        if parts.depthwise:
            mult = kernel.shape[-1]
            bias = bias.reshape(-1, mult)[keep_in].reshape(-1)
    # A depthwise's outputs follow its inputs (`_tie_depthwise` made the
    # output group's cut match): only dense-style layers set their width.
    if keep_out is not None and not parts.depthwise:
        kernel, bias = kernel[..., keep_out], bias[keep_out]
        key = "units" if kinds.is_dense(node.layer) else "filters"
        changes[key] = len(keep_out)
    weights = [kernel, bias] if node.layer.use_bias else [kernel]
    rewrite.reconfigure(graph, node, changes, weights)
