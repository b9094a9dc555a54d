"""Turning collapsible activations back into plain Keras layers."""

import keras
import numpy as np

from keras_collapse.passes import kinds
from keras_collapse.passes import rewrite


def restore_plain_activations(graph, journal):
    """Replaces each nonlinear collapsible activation by the plain Keras layer
    that computes the same function, so the result loads without
    keras_collapse: alpha = 0 -> the original activation (`ReLU`,
    `LeakyReLU`, `Activation`), a ReLU with other alphas -> `PReLU`. A blend
    of another activation at alpha != 0 has no plain equivalent and stays.

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
        if not np.any(alpha):
            plain = _plain_activation(layer.activation, layer.activation_kwargs)
            weights = None
        elif layer.activation == "relu" and not layer.activation_kwargs:
            plain, weights = _prelu(layer, alpha, rank)
        else:
            journal.skip(
                "plain_activation",
                [name],
                f"{layer.activation} blended at alpha != 0 has no plain "
                "Keras layer; kept as CollapsibleActivation",
            )
            continue
        if plain is None:
            journal.skip(
                "plain_activation",
                [name],
                f"no plain layer for {layer.activation}"
                f"({layer.activation_kwargs}); kept",
            )
            continue
        node.layer = _renamed(
            plain, rewrite.replacement_name(graph, node), layer.dtype_policy
        )
        node.weights = weights
        journal.did("plain_activation", [name], type(node.layer).__name__)
        replaced += 1
    return replaced


def _plain_activation(name, kwargs):
    if name == "relu" and set(kwargs) <= {"max_value", "negative_slope", "threshold"}:
        return keras.layers.ReLU(**kwargs)
    if name == "leaky_relu" and set(kwargs) <= {"negative_slope"}:
        return keras.layers.LeakyReLU(**{"negative_slope": 0.2, **kwargs})
    if not kwargs:
        return keras.layers.Activation(name)
    return None


def _prelu(layer, alpha, rank):
    if layer.shared_axes == "all":
        shared, alpha = list(range(1, rank)), np.reshape(alpha, (1,) * (rank - 1))
    else:
        shared = layer.shared_axes
    return keras.layers.PReLU(shared_axes=shared), [alpha]


def _renamed(layer, name, dtype):
    config = layer.get_config()
    config.update(name=name, dtype=dtype)
    return type(layer).from_config(config)
