"""Which kernel feeds which collapsible activation: what NEPENTHE (and
`prune_by_fraction`) may prune without breaking the surgery's exactness."""

import collections
import dataclasses

import keras

from keras_collapse.graph import Graph
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite
from keras_collapse.scores.pairs import find_pairs

# Exact types, as in graph/kinds.py: a subclass may use its kernel otherwise.
_KERNEL_TYPES = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
)


@dataclasses.dataclass(frozen=True)
class Prunable:
    """A collapsible activation and the layer whose kernel feeds it.

    Attributes:
        activation: the collapsible activation layer.
        layer: the Conv/Dense/DepthwiseConv layer, or None (`reason` says
            why).
        batchnorm: the BatchNormalization between them, or None.
        reason: str or None.
    """

    activation: keras.layers.Layer
    layer: keras.layers.Layer | None
    batchnorm: keras.layers.Layer | None = None
    reason: str | None = None


def prunable_layers(model):
    """The kernel layer feeding each collapsible activation of `model`.

    A Conv1D/2D/3D, DepthwiseConv1D/2D or Dense feeds an activation when the
    activation reads its output directly or through the BatchNormalization
    `find_pairs` pairs it with, and nothing else reads that output. Other
    activations (after pooling without a BN, after an `Add`, after a
    Dense with LoRA, a quantized or shared layer...) get `layer=None` and a
    reason. Masking any of these kernels only puts zeros in them, so the
    `surgery` of a pruned model stays exact.

    Args:
        model: a Functional or Sequential `keras.Model`.

    Returns:
        list of `Prunable`, one per collapsible activation, in graph order.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(4, 3, name="conv"),
    ...     kc.CollapsibleActivation("relu", name="a"),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(5, name="fc"),
    ...     kc.CollapsibleActivation("relu", name="b"),
    ...     keras.layers.Dense(2)])
    >>> [(p.activation.name, p.layer.name) for p in kc.prunable_layers(model)]
    [('a', 'conv'), ('b', 'fc')]
    """
    graph = Graph.from_model(model)
    readers = rewrite.readers(graph)
    nodes, uses = {}, collections.Counter()
    for node in graph.layer_nodes():
        nodes.setdefault(id(node.layer), node)
        uses[id(node.layer)] += 1
    found = []
    for pair in find_pairs(model):
        node = nodes.get(id(pair.activation))
        if node is None or uses[id(pair.activation)] > 1:
            found.append(Prunable(pair.activation, None, None, pair.reason))
            continue
        if pair.batchnorm is not None:
            node = nodes[id(pair.batchnorm)]
        found.append(_feeding(graph, readers, uses, node, pair))
    return found


def _feeding(graph, readers, uses, node, pair):
    refs = node.input_refs
    what = "its BatchNormalization " if pair.batchnorm is not None else ""

    def skip(reason):
        return Prunable(pair.activation, None, pair.batchnorm, reason)

    if len(refs) != 1:
        return skip(pair.reason or "input is not a single tensor")
    source = graph.producer(refs[0])
    if source.is_input:
        return skip("reads a model input")
    layer = source.layer
    name = getattr(layer, "name", type(layer).__name__)
    if type(layer) not in _KERNEL_TYPES:
        if pair.batchnorm is None and pair.reason and kinds.is_batchnorm(layer):
            return skip(pair.reason)  # a BN find_pairs refused (shared, ...)
        return skip(f"{what}reads '{name}', not a Conv/Dense/DepthwiseConv")
    if uses[id(layer)] > 1:
        return skip(f"'{name}' is shared (called at several places)")
    if readers.sole(refs[0]) is not node:
        return skip(f"the output of '{name}' has other readers")
    if getattr(layer, "lora_rank", None):
        return skip(f"'{name}' has LoRA (Keras forbids kernel constraints there)")
    if getattr(layer, "quantization_mode", None):
        return skip(f"'{name}' is quantized")
    return Prunable(pair.activation, layer, pair.batchnorm, None)


def output_channels(layer):
    """The output channels of a kernel layer: the kernel's last axis (a
    depthwise kernel's last two: input channels x multiplier, in Keras'
    output order). A flat kernel index `i` feeds channel `i % channels`."""
    shape = tuple(layer.kernel.shape)
    depthwise = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    if isinstance(layer, depthwise):
        return int(shape[-2]) * int(shape[-1])
    return int(shape[-1])
