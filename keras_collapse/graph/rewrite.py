"""The rewrite API the passes edit a `Graph` with.

Passes read a graph through `readers` (who reads a tensor, its sole reader)
and `reach` (a walk forward through chosen nodes), and change it only
through the functions here and `Graph.add` / `Graph.bypass` /
`Graph.replace_uses`: a new layer into a node (`set_layer`, `reconfigure`,
`set_kernel_and_bias`), a node out of the graph (`remove`), a node after
another (`insert_after`), a node's channel count (`resize_channels`).
Layers and weight arrays are never changed in place: `Graph.copy` shares
them.
"""

import keras
import numpy as np

from keras_collapse.graph import kinds
from keras_collapse.graph.ir import Ref
from keras_collapse.graph.names import Names


# ------------------------------------------------------------------- reading
class Readers(dict):
    """`{Ref: [node, ...]}`: who reads each tensor of a graph when it was
    made (`readers(graph)`), `None` in a list for a model output. Made
    again after an edit that rewires."""

    def of(self, ref):
        """The nodes reading `ref` (`None` for a model output)."""
        return self.get(ref, [])

    def has_one(self, ref):
        """Whether exactly one node, or one model output, reads `ref`."""
        return len(self.of(ref)) == 1

    def sole(self, ref):
        """The node that alone reads `ref`, or None (no reader, several, or
        a model output)."""
        reading = self.of(ref)
        return reading[0] if len(reading) == 1 else None


def readers(graph):
    """The `Readers` of every tensor of `graph`."""
    return Readers(graph.consumers())


def reach(graph, starts, through, known=None):
    """The nodes reached from the tensors `starts`, walking forward.

    Every node that reads a tensor reached is returned, once, in the order
    met; the walk goes on from its output `index` where `through(node,
    index)` is true.

    Args:
        graph: `Graph`.
        starts: iterable of `Ref`.
        through: callable `(node, index) -> bool`.
        known: `Readers` of the graph, if at hand.

    Returns:
        list of `Node`.
    """
    known = readers(graph) if known is None else known
    found, seen, todo = [], set(), list(starts)
    while todo:
        ref = todo.pop()
        for node in known.of(ref):
            if node is None or node.id in seen:
                continue
            seen.add(node.id)
            found.append(node)
            todo.extend(
                Ref(node.id, i) for i in range(len(node.shapes)) if through(node, i)
            )
    return found


def layer_names(graph):
    return {
        n.layer.name
        for n in graph.nodes.values()
        if isinstance(n.layer, keras.layers.Layer)
    }


def unique_name(graph, base, taken=None):
    """`base` if no layer of the graph carries it yet, else `base_1`, ..."""
    taken = layer_names(graph) if taken is None else taken
    return Names(taken).take(base, keep=False)


def replacement_name(graph, node, base=None):
    """A unique name for a layer that replaces `node.layer`: the old name
    (or `base`) when no other node still uses the old layer."""
    taken = layer_names(graph)
    if not any(n.layer is node.layer and n is not node for n in graph.nodes.values()):
        taken.discard(node.layer.name)
    return unique_name(graph, base or node.layer.name, taken)


def kernel_and_bias(node):
    """(kernel, bias) of a Conv/Depthwise/Dense node, as float64 arrays.

    `node.weights` (set by an earlier pass) wins over the layer's own.
    """
    layer = node.layer
    weights = node.weights if node.weights is not None else layer.get_weights()
    kernel = np.asarray(weights[0], dtype="float64")
    if layer.use_bias:
        bias = np.asarray(weights[1], dtype="float64")
    else:
        depthwise = isinstance(layer, kinds.DEPTHWISE_TYPES)
        bias = np.zeros(kernel.shape[-1] * (kernel.shape[-2] if depthwise else 1))
    return kernel, bias


def cast_like(array, layer):
    """Weights go back in the layer's variable dtype (float32 usually)."""
    return np.asarray(
        array, dtype=keras.backend.standardize_dtype(layer.variable_dtype)
    )


# ------------------------------------------------------------------- editing
def set_layer(graph, node, layer, weights=None, args=None):
    """Makes `node` call `layer`, with `weights` (NumPy arrays, set once
    built; None keeps the layer's own) and, if given, the positional
    arguments `args` (keyword arguments dropped). Returns `layer`."""
    node.layer = layer
    node.weights = None if weights is None else [np.asarray(w) for w in weights]
    if args is not None:
        node.args, node.kwargs = tuple(args), {}
    return layer


def reconfigure(graph, node, config_changes, weights, name=None):
    """Puts a new layer, built from `node.layer`'s config with
    `config_changes`, into `node`, with `weights` to set once built. The
    layer keeps its name (or takes `name`) when free. Returns the layer."""
    old = node.layer
    config = old.get_config()
    config.update(config_changes)
    config["name"] = replacement_name(graph, node, name)
    return set_layer(graph, node, type(old).from_config(config), weights)


def set_kernel_and_bias(graph, node, kernel, bias, **config_changes):
    """Gives a Conv/Depthwise/Dense node a new layer computing with `kernel`
    and `bias` (any float dtype: cast to the layer's variable dtype), its
    bias on, and `config_changes` (e.g. `filters=`). Returns the layer."""
    weights = [cast_like(kernel, node.layer), cast_like(bias, node.layer)]
    return reconfigure(graph, node, {"use_bias": True, **config_changes}, weights)


def remove(graph, node):
    """Takes `node` out of the graph; whatever read it must be rewired or
    removed too (`Graph.bypass` does both for a single-input node)."""
    del graph.nodes[node.id]


def insert_after(graph, node, layer):
    """Adds a node calling `layer` on `node`'s single output and makes every
    reader of that output (and the model outputs) read the new node
    instead. Returns the new node."""
    after = graph.add(layer, shapes=node.shapes, dtypes=node.dtypes)
    graph.replace_uses(Ref(node.id), Ref(after.id))
    after.args = (Ref(node.id),)
    return after


def resize_channels(node, channels):
    """Sets the channel count (last axis) of a single-output node's shape."""
    node.shapes[0] = (*node.shapes[0][:-1], channels)
