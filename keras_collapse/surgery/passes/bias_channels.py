"""Carrying a border-aware bias in a constant channel instead of a layer.

A merge of a 1x1 conv with a bias into a "same" k x k conv leaves a bias that
differs at the image border, `B(p) = b + sum of c[t] over the taps t of
output position p that read inside the input`, emitted as a layer after the
merged conv (`layers/bias_map`). When the conv's input comes from a Conv or
Dense that can emit one more channel equal to 1 everywhere (a zero kernel
column and a bias of 1, through activations that map 1 to 1), the merged conv
reads that channel with kernel `c`: its own "same" zero padding then sums `c`
over exactly the taps inside, and the layer goes. A few MACs per position buy
one layer less: a win where each layer has a fixed cost (PyTorch eager at
batch 1), a loss where an odd channel count slows the convs (XLA), so the
cost model decides (`MeasuredCostModel` measures both; MACs keep the layer).
"""

import math

import keras
import numpy as np

from keras_collapse.algebra.cost import taps_inside
from keras_collapse.graph import Ref
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite
from keras_collapse.layers.bias_map import is_bias_map
from keras_collapse.layers.bias_map import map_of
from keras_collapse.surgery.cost_models import layer_overhead
from keras_collapse.surgery.cost_models import price
from keras_collapse.surgery.passes.merge import layer_kind
from keras_collapse.surgery.passes.merge import positions

# Activations that may sit between the constant channel's source and the
# merged conv: each must map 1 to 1 on every channel (checked numerically).
_PASS_THROUGH = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.Activation)


def absorb_bias_maps(graph, journal, cost_model):
    """Replaces each bias-map layer after a "same" conv by a constant input
    channel of that conv, where its input's producer can emit one and the
    cost model prices the two wider layers below the two layers and the bias
    layer (`cost_model.layer_overhead` for the layer; by MACs alone the
    bias layer is free, so `MacCostModel()` keeps it). Returns the number of
    layers removed."""
    removed = 0
    for node in graph.layer_nodes():
        if node.id not in graph.nodes or not is_bias_map(node.layer):
            continue
        readers = rewrite.readers(graph)
        conv = graph.producer(node.input_refs[0])
        if not _is_plain_same_conv(conv) or not readers.has_one(Ref(conv.id)):
            continue
        kernel, bias = rewrite.kernel_and_bias(conv)
        in_shape = graph.producer(conv.input_refs[0]).shape
        solved = _taps_of(map_of(node.layer), kernel.shape[:-2], conv, in_shape)
        if solved is None:
            continue
        chain = _constant_source(graph, conv.input_refs[0], readers)
        if chain is None:
            journal.skip(
                "bias_channel",
                [node.layer.name],
                "the conv's input comes from no Conv/Dense that can add a "
                "constant channel: the bias map stays a layer",
            )
            continue
        taps, uniform = solved
        source, between = chain
        if not _pays(source, conv, cost_model):
            journal.skip(
                "bias_channel",
                [node.layer.name],
                "a constant channel costs more than the bias layer under the "
                "cost model",
            )
            continue
        _add_constant_channel(graph, source, between)
        kernel = np.concatenate([kernel, taps[..., None, :]], axis=-2)
        rewrite.set_kernel_and_bias(graph, conv, kernel, bias + uniform)
        graph.bypass(node)
        journal.did(
            "bias_channel",
            [node.layer.name, conv.layer.name, source.layer.name],
            f"border-aware bias read from a constant channel of '{source.layer.name}'",
        )
        removed += 1
    return removed


def _pays(source, conv, cost_model):
    """Whether one more output channel of `source` and one more input
    channel of `conv` cost less than the bias layer they replace."""

    def cost(node, extra_in=0, extra_out=0):
        kernel, _ = rewrite.kernel_and_bias(node)
        *taps, channels, out = kernel.shape
        kind = layer_kind(node.layer)
        taps = [] if kind == "dense" else taps
        shape = (*taps, channels + extra_in, out + extra_out)
        return price(
            cost_model, kind, shape, positions(node.shape), f"layer '{node.layer.name}'"
        )

    before = cost(source) + cost(conv) + layer_overhead(cost_model)
    return cost(source, extra_out=1) + cost(conv, extra_in=1) < before


def _is_plain_same_conv(node):
    layer = node.layer
    return (
        not node.is_input
        and kinds.is_conv(layer)
        and layer.padding == "same"
        and kinds.activation_name(layer.activation) == "linear"
        and len(node.input_refs) == 1
    )


def _taps_of(bias_map, taps, conv, in_shape):
    """`(c [taps.., out], b [out])` with `b + sum of c over the taps inside`
    equal to `bias_map` at every output position, or None."""
    spatial = tuple(in_shape[1:-1])
    out_spatial = bias_map.shape[:-1]
    if None in spatial or len(spatial) != len(taps):
        return None
    strides = tuple(conv.layer.strides)
    if tuple(-(-n // s) for n, s in zip(spatial, strides)) != tuple(out_spatial):
        return None
    inside_per_axis = [taps_inside(n, k, s) for n, k, s in zip(spatial, taps, strides)]
    # [positions, taps], both row-major like the map and the kernel.
    inside = np.ones((1, 1), bool)
    for axis in inside_per_axis:
        inside = (inside[:, None, :, None] & axis[None, :, None, :]).reshape(
            inside.shape[0] * axis.shape[0], inside.shape[1] * axis.shape[1]
        )
    design = np.concatenate([inside.astype("float64"), np.ones((len(inside), 1))], 1)
    target = bias_map.reshape(len(inside), -1)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    scale = max(1.0, float(np.max(np.abs(target))))
    if np.max(np.abs(design @ solution - target)) > 1e-6 * scale:
        return None  # not a border pattern of this conv
    return solution[:-1].reshape(*taps, -1), solution[-1]


def _constant_source(graph, ref, readers):
    """`(source, between)`: the Conv/Dense whose output, through the
    `between` activations, is read only by the conv at `ref`; or None."""
    between = []
    while True:
        if not readers.has_one(ref):
            return None
        node = graph.producer(ref)
        if node.is_input or len(node.input_refs) != 1 or len(node.shapes) != 1:
            return None
        layer = node.layer
        if kinds.is_conv(layer) or kinds.is_dense(layer):
            if not _maps_one_to_one(layer.activation) or None in node.shape[-1:]:
                return None
            return node, between
        if not _passes_one(layer):
            return None
        between.append(node)
        ref = node.input_refs[0]


def _maps_one_to_one(fn):
    value = keras.ops.convert_to_numpy(fn(keras.ops.ones((1, 1))))
    return bool(np.all(value == 1.0))


def _passes_one(layer):
    """Whether an elementwise layer maps a channel of ones to ones and takes
    any number of channels."""
    if kinds.is_collapsible(layer):
        if math.prod(layer.alpha.shape) != 1:
            return False  # per-channel slopes: no slope for a new channel
        return _maps_one_to_one(layer)
    if type(layer) in _PASS_THROUGH:
        return _maps_one_to_one(layer)
    return False


def _add_constant_channel(graph, source, between):
    """One more output channel of `source`: zero kernel column, bias 1."""
    kernel, bias = rewrite.kernel_and_bias(source)
    column = np.zeros((*kernel.shape[:-1], 1))
    kernel = np.concatenate([kernel, column], axis=-1)
    bias = np.concatenate([bias, [1.0]])
    key = "units" if kinds.is_dense(source.layer) else "filters"
    changes = {key: kernel.shape[-1]}
    rewrite.set_kernel_and_bias(graph, source, kernel, bias, **changes)
    for node in [source, *between]:
        rewrite.resize_channels(node, node.shape[-1] + 1)
