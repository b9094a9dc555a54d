"""Carrying border-aware bias maps forward until they cost no layer.

A merge that leaves a bias map (`passes/merge`) emits it as a layer after the
merged conv. A linear layer after it carries it on exactly,
`L(y + m) = L(y) + L0(m)` (`L0`: `L` without its bias, with its own zero
padding), and so does an `Add` (the map of a branch is a map of the sum). So a
map is moved forward, through linear layers and adds, to where it costs
nothing: into the next bias map (two layers become one), or into a bias where
it has become the same vector at every position (after a global average
pooling). A map whose road ends at a
nonlinearity first stays where it is. On a fully collapsed MobileNetV2 the
ten block maps become one.
"""

import keras

from keras_collapse.algebra.apply import apply_conv
from keras_collapse.graph import Ref
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite
from keras_collapse.layers.bias_map import bias_map_layer
from keras_collapse.layers.bias_map import is_bias_map
from keras_collapse.layers.bias_map import is_uniform
from keras_collapse.layers.bias_map import map_of

_GLOBAL_AVERAGE = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
)


def push_bias_maps(graph, journal):
    """Moves each bias-map layer forward to a later bias map or a bias, where
    that road exists (see the module's docstring), in place. Returns the
    number of layers removed."""
    removed = 0
    for node in graph.topological():
        if node.id not in graph.nodes or not is_bias_map(node.layer):
            continue
        road = _road(graph, node)
        if road is None:
            continue
        through, end, value = road
        graph.bypass(node)
        if is_bias_map(end.layer):
            total = map_of(end.layer) + value
            rewrite.set_layer(
                graph,
                end,
                bias_map_layer(
                    rewrite.cast_like(total, end.layer),
                    dtype=end.layer.dtype_policy,
                    name=end.layer.name,
                ),
            )
            into = f"the bias map '{end.layer.name}'"
        else:
            kernel, bias = rewrite.kernel_and_bias(end)
            rewrite.set_kernel_and_bias(graph, end, kernel, bias + value)
            into = f"the bias of '{end.layer.name}'"
        names = [node.layer.name, *(n.layer.name for n in through), end.layer.name]
        journal.did("bias_push", names, f"border-aware bias carried into {into}")
        removed += 1
    return removed


def _road(graph, node):
    """`(through, end, value)`: the layers a map passes, the node that takes
    it (a bias map, or a linear layer whose bias takes `value`, a vector),
    and what the map is there; or None where it meets anything else first."""
    readers = rewrite.readers(graph)
    value, ref, through = map_of(node.layer), Ref(node.id), []
    while True:
        nxt = readers.sole(ref)
        if nxt is None:
            return None  # read twice, or a model output
        if not graph.has_finite_weights(nxt):
            return None
        if is_bias_map(nxt.layer):
            if map_of(nxt.layer).shape != value.shape:
                return None
            return through, nxt, value
        if _is_plain_linear(nxt):
            value = _through_linear(nxt, value)
            if value is None:
                return None
            if is_uniform(value):  # the same at every position: a bias
                return through, nxt, value.reshape(-1, value.shape[-1])[0]
            if kinds.activation_name(nxt.layer.activation) != "linear":
                return None
        elif type(nxt.layer) is keras.layers.Add:
            if any(
                graph.producer(r).shapes[r.index] != nxt.shape for r in nxt.input_refs
            ):
                return None  # broadcasting: the map would not be the sum's
        elif _is_global_average(nxt.layer):
            value = value.reshape(-1, value.shape[-1]).mean(axis=0)
        else:
            return None
        through.append(nxt)
        ref = Ref(nxt.id)


def _is_plain_linear(node):
    layer = node.layer
    return (
        not node.is_input
        and len(node.input_refs) == 1
        and (kinds.is_conv(layer) or kinds.is_depthwise(layer) or kinds.is_dense(layer))
    )


def _through_linear(node, value):
    """`L0(value)` for a Conv/Depthwise/Dense node, or None where the map's
    shape does not fit it."""
    kernel, _ = rewrite.kernel_and_bias(node)
    layer = node.layer
    if kinds.is_dense(layer):
        return value @ kernel if value.shape[-1] == kernel.shape[0] else None
    if value.ndim != kernel.ndim - 1 or layer.padding not in ("same", "valid"):
        return None  # a vector after pooling, or "causal"
    try:
        return apply_conv(
            value,
            kernel,
            tuple(layer.strides),
            layer.padding,
            kinds.is_depthwise(layer),
        )
    except ValueError:
        return None


def _is_global_average(layer):
    return (
        type(layer) in _GLOBAL_AVERAGE
        and layer.data_format == "channels_last"
        and not layer.keepdims
    )
