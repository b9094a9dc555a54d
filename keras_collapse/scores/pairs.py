"""Which BatchNormalization produces the pre-activation of each collapsible
activation: the pairs TLC reads its ON/OFF statistics from."""

import dataclasses

import keras

from keras_collapse.collapsible import collapsible_layers
from keras_collapse.graph import Graph
from keras_collapse.graph import kinds

# Single-input layers between a BN and its activation that keep every channel
# apart and map a channel that is always ON (OFF) to one that is always ON
# (OFF): the BN's statistics still decide the channel's state, and a channel
# zeroed at the BN stays zero up to the activation.
_CHANNEL_PRESERVING = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
)


@dataclasses.dataclass(frozen=True)
class Pair:
    """A collapsible activation and the BatchNormalization feeding it.

    `batchnorm` is None when there is none to read (`reason` says why).
    """

    activation: keras.layers.Layer
    batchnorm: keras.layers.Layer | None
    reason: str | None = None


def find_pairs(model):
    """Pairs each collapsible activation of `model` with the BatchNormalization
    whose output it reads, directly or through dropout, pooling or padding.

    A pair needs the BN's output to reach the activation alone (no other
    reader on the way, no model output): zeroing a BN channel then changes
    nothing but that activation's input. An activation after a residual `Add`
    is not paired: the shortcut carries the other half of its input.

    Args:
        model: a Functional or Sequential `keras.Model`.

    Returns:
        list of `Pair`, one per collapsible activation, in graph order.
    """
    activations = collapsible_layers(model)
    graph = Graph.from_model(model)
    readers = graph.consumers()
    uses = {}
    for node in graph.layer_nodes():
        uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1
    by_layer = {}
    for node in graph.layer_nodes():
        if kinds.is_collapsible(node.layer) and id(node.layer) not in by_layer:
            by_layer[id(node.layer)] = _pair(graph, node, readers, uses)
    return [
        by_layer.get(id(layer), Pair(layer, None, "not in the model's graph"))
        for layer in activations
    ]


def _pair(graph, node, readers, uses):
    layer = node.layer
    if uses[id(layer)] > 1:
        return Pair(layer, None, "shared layer (called at several places)")
    refs = node.input_refs
    while True:
        if len(refs) != 1:
            return Pair(layer, None, "input is not a single tensor")
        (ref,) = refs
        reading = readers.get(ref, [])
        if len(reading) != 1 or reading[0] is not node:
            return Pair(layer, None, "pre-activation has other readers")
        source = graph.producer(ref)
        if source.is_input:
            return Pair(layer, None, "reads a model input")
        if kinds.is_batchnorm(source.layer):
            if uses[id(source.layer)] > 1:
                return Pair(layer, None, "its BatchNormalization is shared")
            return Pair(layer, source.layer)
        if len(source.input_refs) > 1:
            what = getattr(source.layer, "name", type(source.layer).__name__)
            return Pair(layer, None, f"reads '{what}', which merges several tensors")
        if not (
            isinstance(source.layer, _CHANNEL_PRESERVING)
            or (
                isinstance(source.layer, keras.layers.Layer)
                and kinds.is_identity_at_inference(source)
            )
        ):
            what = getattr(source.layer, "name", type(source.layer).__name__)
            return Pair(
                layer, None, f"no BatchNormalization before it ('{what}' comes first)"
            )
        node, refs = source, source.input_refs
