"""Turning collapsible activations back into plain Keras layers."""

import keras
import numpy as np

from keras_collapse.graph import Ref
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite
from keras_collapse.graph.clone import renamed


def restore_plain_activations(graph, journal):
    """Replaces each nonlinear collapsible activation by plain Keras layers
    that compute the same function, so the result loads without
    keras_collapse: alpha = 0 -> the original activation (`ReLU`,
    `LeakyReLU`, `Activation`); a ReLU with other alphas -> `PReLU`; any
    other blend `act(x) + alpha * (x - act(x))` -> `Activation`, `Subtract`,
    `Rescaling(alpha)` and `Add`, the same operations in the same order.

    Returns:
        int, the number of layers replaced.
    """
    replaced = 0
    for node in graph.layer_nodes():
        layer = node.layer
        if not kinds.is_collapsible(layer) or layer.is_linear:
            continue
        alpha = layer.alpha_numpy()
        rank = len(node.shape)
        name = layer.name
        plain = _plain_activation(layer.activation, layer.activation_kwargs)
        if plain is None:
            journal.skip(
                "plain_activation",
                [name],
                f"no plain layer for {layer.activation}"
                f"({layer.activation_kwargs}); kept",
            )
            continue
        new_name = rewrite.replacement_name(graph, node)
        dtype = layer.dtype_policy
        if not np.any(alpha):
            rewrite.set_layer(graph, node, renamed(plain, new_name, dtype))
        elif layer.activation == "relu" and not layer.activation_kwargs:
            plain, weights = _prelu(layer, alpha, rank)
            rewrite.set_layer(graph, node, renamed(plain, new_name, dtype), weights)
        else:
            act_name = rewrite.unique_name(graph, name + "_act")
            _blend(graph, node, renamed(plain, act_name, dtype), alpha)
        journal.did("plain_activation", [name], type(node.layer).__name__)
        replaced += 1
    return replaced


def _blend(graph, node, act, alpha):
    """Rewires `node` into `a = act(x); a + alpha * (x - a)`, plain layers."""
    (x,) = node.input_refs
    dtype, name = node.layer.dtype_policy, node.layer.name
    shapes, dtypes = node.shapes, node.dtypes

    def add(layer, *args):
        return Ref(graph.add(layer, args, shapes=shapes, dtypes=dtypes).id)

    a = add(act, x)
    unique = rewrite.unique_name
    diff = add(
        keras.layers.Subtract(dtype=dtype, name=unique(graph, name + "_diff")), [x, a]
    )
    scale = np.asarray(alpha, dtype="float32")
    scaled = add(
        keras.layers.Rescaling(
            float(scale) if scale.ndim == 0 else scale,
            dtype=dtype,
            name=unique(graph, name + "_alpha"),
        ),
        diff,
    )
    adder = keras.layers.Add(dtype=dtype, name=rewrite.replacement_name(graph, node))
    rewrite.set_layer(graph, node, adder, args=([a, scaled],))


def _plain_activation(name, kwargs):
    if name == "relu" and set(kwargs) <= {"max_value", "negative_slope", "threshold"}:
        return keras.layers.ReLU(**kwargs)
    if name == "leaky_relu" and set(kwargs) <= {"negative_slope"}:
        return keras.layers.LeakyReLU(**{"negative_slope": 0.2, **kwargs})
    if not kwargs:
        return keras.layers.Activation(name)
    alias = kinds.registered_alias(name, kwargs)
    return None if alias is None else keras.layers.Activation(alias)


def _prelu(layer, alpha, rank):
    if layer.shared_axes == "all":
        shared, alpha = list(range(1, rank)), np.reshape(alpha, (1,) * (rank - 1))
    else:
        shared = layer.shared_axes
    return keras.layers.PReLU(shared_axes=shared), [alpha]
