"""Small tools the passes share: names, weights, and new layers from old ones."""

import keras
import numpy as np

from keras_collapse.passes import kinds


def layer_names(graph):
    return {
        n.layer.name
        for n in graph.nodes.values()
        if isinstance(n.layer, keras.layers.Layer)
    }


def unique_name(graph, base, taken=None):
    """`base` if no layer of the graph carries it yet, else `base_1`, ..."""
    taken = layer_names(graph) if taken is None else taken
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


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


def replace_layer(graph, node, config_changes, weights, name=None):
    """Puts a new layer, built from `node.layer`'s config with `config_changes`,
    into `node`, with `weights` (NumPy arrays) to set once built."""
    old = node.layer
    config = old.get_config()
    config.update(config_changes)
    config["name"] = replacement_name(graph, node, name)
    node.layer = type(old).from_config(config)
    node.weights = [np.asarray(w) for w in weights]
    return node.layer


def cast_like(array, layer):
    """Weights go back in the layer's variable dtype (float32 usually)."""
    return np.asarray(
        array, dtype=keras.backend.standardize_dtype(layer.variable_dtype)
    )
