"""Merging runs of linear layers into one, and residuals into kernels.

A *run* is a chain Conv/Depthwise/Dense -> ... -> Conv/Depthwise/Dense where
every layer but the last has no activation and is read only by the next.
Each run is cut into segments by dynamic programming so that the total cost
(`cost_model`) is smallest; a segment of several layers becomes one layer.

For composing, a depthwise kernel is written as the equivalent dense kernel
and a Dense on an image as a 1x1 conv; the merged layer is a Conv (or Dense).
Which compositions are exact (methods.md, "Merging algebra"):
- "valid" -> "valid": always.
- anything -> 1x1 stride 1: always (a 1x1 sees no padding).
- 1x1 stride 1 -> "same" k x k: exact when the 1x1 has no bias; otherwise a
  border-aware bias map (static input size needed) follows the merged conv,
  as a plain `Rescaling` offset (`layers/bias_map.bias_map_layer`).
- "same" k x k -> "same" k x k (stride 1): exact only away from the border;
  taken only with `exact=False`.
"""

import math

import keras
import numpy as np

from keras_collapse import algebra
from keras_collapse.graph import Ref
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite
from keras_collapse.graph.random_arrays import NOMINAL_SIZE
from keras_collapse.layers.bias_map import bias_map_layer
from keras_collapse.layers.bias_map import is_uniform
from keras_collapse.surgery.cost_models import price


class LinearOp:
    """A linear layer in composable form: dense kernel `[k.., in, out]` (no
    spatial axes for a Dense on vectors), bias vector or `[spatial.., out]`
    map, strides and padding.

    A composed op knows its kernel shape at once and computes its weights
    only when they are read: the merge pass prices every segment of a run
    but builds only the segments it takes (a 3x3 512->512 conv into a 1x1
    512->2048 costs seconds to compose and is never taken).
    """

    def __init__(
        self,
        kernel_shape,
        strides,
        padding,
        weights,
        *,
        bias_is_map=False,
        bias_nonzero=True,
        exact=True,
    ):
        self.kernel_shape = tuple(kernel_shape)
        self.strides = tuple(strides)
        self.padding = padding
        self.exact = exact
        self.has_bias_map = bias_is_map
        # Whether the bias may be nonzero (False only when known zero).
        self.bias_nonzero = bias_nonzero
        self._weights = weights  # () -> (kernel, bias), called once

    @classmethod
    def of(cls, kernel, bias, strides, padding):
        return cls(
            kernel.shape,
            strides,
            padding,
            lambda: (kernel, bias),
            bias_is_map=bias.ndim > 1,
            bias_nonzero=bool(np.any(bias)),
        )

    def _computed(self):
        if callable(self._weights):
            self._weights = self._weights()
        return self._weights

    @property
    def kernel(self):
        return self._computed()[0]

    @property
    def bias(self):
        return self._computed()[1]

    @property
    def rank(self):
        return len(self.kernel_shape) - 2

    @property
    def pointwise_stride1(self):
        return all(k == 1 for k in self.kernel_shape[:-2]) and all(
            s == 1 for s in self.strides
        )


def _dense_from_depthwise(dw):
    """`[k.., C, m]` depthwise kernel -> the dense `[k.., C, C*m]` kernel."""
    *taps, channels, mult = dw.shape
    dense = np.zeros((*taps, channels, channels * mult))
    for c in range(channels):
        dense[..., c, c * mult : (c + 1) * mult] = dw[..., c, :]
    return dense


def linear_op(node):
    """The `LinearOp` of a Conv/Depthwise/Dense node, or None."""
    layer = node.layer
    if not (kinds.is_conv(layer) or kinds.is_depthwise(layer) or kinds.is_dense(layer)):
        return None
    kernel, bias = rewrite.kernel_and_bias(node)
    if kinds.is_dense(layer):
        rank = len(node.shape) - 2
        kernel = kernel.reshape((1,) * rank + kernel.shape)
        return LinearOp.of(kernel, bias, (1,) * rank, "valid")
    if kinds.is_depthwise(layer):
        kernel = _dense_from_depthwise(kernel)
    return LinearOp.of(kernel, bias, tuple(layer.strides), layer.padding)


def _conv_shape(a, b, strides_a):
    """Kernel shape of `a` then `b` as one conv (`algebra.compose_conv`)."""
    taps = [
        ka + (kb - 1) * s
        for ka, kb, s in zip(a.kernel_shape[:-2], b.kernel_shape[:-2], strides_a)
    ]
    return (*taps, a.kernel_shape[-2], b.kernel_shape[-1])


def compose(a, b, b_input_shape, exact):
    """`a` then `b` as one LinearOp; or `(None, reason)`. Which case applies
    and the merged shape are decided here; the weights are computed when
    the result's are read."""
    if a.rank != b.rank:
        return None, "ranks differ"
    both_exact = a.exact and b.exact
    nonzero = a.bias_nonzero or b.bias_nonzero
    if b.pointwise_stride1:

        def weights():
            k2 = b.kernel.reshape(b.kernel.shape[-2:])
            # per tap: exact for any padding and stride of `a`
            return a.kernel @ k2, a.bias @ k2 + b.bias

        shape = (*a.kernel_shape[:-1], b.kernel_shape[-1])
        return LinearOp(
            shape,
            a.strides,
            a.padding,
            weights,
            bias_is_map=a.has_bias_map,
            bias_nonzero=nonzero,
            exact=a.exact,
        ), None
    if a.has_bias_map:
        return None, "a border-aware bias can only flow into a 1x1 conv"
    if a.padding == "valid" and b.padding == "valid":

        def weights():
            kernel, bias, _ = algebra.compose_conv(
                a.kernel, a.bias, a.strides, b.kernel, b.bias, b.strides
            )
            return kernel, bias

        strides = tuple(x * y for x, y in zip(a.strides, b.strides))
        shape = _conv_shape(a, b, a.strides)
        return LinearOp(
            shape, strides, "valid", weights, bias_nonzero=nonzero, exact=both_exact
        ), None
    if a.pointwise_stride1:
        shape = _conv_shape(a, b, a.strides)
        if b.padding == "valid" or not a.bias_nonzero:

            def weights():
                kernel, bias, _ = algebra.compose_conv(
                    a.kernel, a.bias, 1, b.kernel, b.bias, b.strides
                )
                return kernel, bias

            return LinearOp(
                shape,
                b.strides,
                b.padding,
                weights,
                bias_nonzero=nonzero,
                exact=both_exact,
            ), None
        spatial = b_input_shape[1:-1]
        if any(d is None for d in spatial):
            return None, "exact needs a bias map, which needs a static input size"

        def weights():
            kernel, bias, _ = algebra.compose_conv(
                a.kernel, None, 1, b.kernel, b.bias, b.strides
            )
            return kernel, bias + algebra.same_padding_bias_map(
                a.bias, b.kernel, spatial, b.strides
            )

        return LinearOp(
            shape, b.strides, "same", weights, bias_is_map=True, exact=both_exact
        ), None
    if (
        a.padding == b.padding == "same"
        and all(s == 1 for s in a.strides + b.strides)
        and all(k % 2 for k in a.kernel_shape[:-2] + b.kernel_shape[:-2])
    ):
        if exact:
            return None, "'same' k x k into k x k is exact only away from the border"

        def weights():
            kernel, bias, _ = algebra.compose_conv(
                a.kernel, a.bias, 1, b.kernel, b.bias, 1
            )
            return kernel, bias

        shape = _conv_shape(a, b, (1,) * a.rank)
        return LinearOp(
            shape, (1,) * a.rank, "same", weights, bias_nonzero=nonzero, exact=False
        ), None
    return (
        None,
        f"no exact merge of '{a.padding}' into '{b.padding}' with these strides",
    )


def positions(shape):
    """Output positions per sample, as cost models take them (unknown sizes
    priced as `NOMINAL_SIZE`)."""
    return math.prod(NOMINAL_SIZE if d is None else d for d in shape[1:-1])


def layer_kind(layer):
    """The cost-model kind of a Conv/Depthwise/Dense layer, else None."""
    if kinds.is_depthwise(layer):
        return "depthwise"
    if kinds.is_dense(layer):
        return "dense"
    if kinds.is_conv(layer):
        return "conv"
    return None


def _original_cost(node, cost_model):
    kernel, _ = rewrite.kernel_and_bias(node)
    return price(
        cost_model,
        layer_kind(node.layer),
        kernel.shape,
        positions(node.shape),
        f"layer '{node.layer.name}'",
    )


def _merged_cost(op, out_shape, cost_model, segment):
    kind = "conv" if op.rank else "dense"
    names = ", ".join(f"'{node.layer.name}'" for node in segment)
    return price(
        cost_model,
        kind,
        op.kernel_shape,
        positions(out_shape),
        f"the merge of {names}",
    )


def find_runs(graph):
    """Maximal chains of Conv/Depthwise/Dense nodes that can merge pairwise."""
    readers = rewrite.readers(graph)
    ops = {n.id: n for n in graph.layer_nodes() if linear_op_kind(graph, n)}

    def next_of(node):
        if kinds.activation_name(node.layer.activation) != "linear":
            return None
        nxt = readers.sole(Ref(node.id))
        if nxt is None or nxt.id not in ops:
            return None
        return nxt if nxt.input_refs == [Ref(node.id)] and not nxt.kwargs else None

    has_prev = {nxt.id for n in ops.values() if (nxt := next_of(n)) is not None}
    runs = []
    for node in ops.values():
        if node.id in has_prev:
            continue
        run = [node]
        while (nxt := next_of(run[-1])) is not None:
            run.append(nxt)
        if len(run) > 1:
            runs.append(run)
    return runs


def linear_op_kind(graph, node):
    layer = node.layer
    return (
        kinds.is_conv(layer) or kinds.is_depthwise(layer) or kinds.is_dense(layer)
    ) and (
        len(node.input_refs) == 1
        and len(node.shapes) == 1
        and None not in node.shape[-1:]
        and graph.has_finite_weights(node)
    )


def merge_runs(graph, journal, cost_model, exact=True):
    """Merges the segments of every run that lower the cost. Returns the
    number of layers removed."""
    removed = 0
    for run in find_runs(graph):
        for segment, op in _best_segments(graph, run, journal, cost_model, exact):
            _emit(graph, segment, op, journal)
            removed += len(segment) - 1
    return removed


def _best_segments(graph, run, journal, cost_model, exact):
    n = len(run)
    ops = [linear_op(node) for node in run]
    merged = {}  # (i, j) -> LinearOp covering run[i:j], j - i >= 2
    reasons = {}
    for i in range(n):
        op = ops[i]
        for j in range(i + 1, n):
            in_shape = graph.producer(run[j].input_refs[0]).shape
            op, reason = compose(op, ops[j], in_shape, exact)
            if op is None:
                reasons[(i, j)] = reason
                break
            merged[(i, j + 1)] = op
    best = [0.0] + [math.inf] * n
    choice = [None] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            if j - i == 1:
                cost = _original_cost(run[i], cost_model)
            elif (i, j) in merged:
                cost = _merged_cost(
                    merged[(i, j)], run[j - 1].shape, cost_model, run[i:j]
                )
            else:
                continue
            # Ties go to the longer segment: fewer layers for the same MACs.
            if best[i] + cost < best[j] or (best[i] + cost == best[j] and j - i > 1):
                best[j], choice[j] = best[i] + cost, i
    segments, j = [], n
    while j > 0:
        i = choice[j]
        if j - i > 1:
            segments.append((run[i:j], merged[(i, j)]))
        j = i
    names = [node.layer.name for node in run]
    if not segments:
        why = "; ".join(sorted(set(reasons.values()))) or "merging would cost more"
        journal.skip("merge", names, why)
    return segments[::-1]


def _emit(graph, segment, op, journal):
    """Replaces the nodes of `segment` by one layer computing `op`.

    The merged layer keeps the last layer's fused activation, unless a
    border-aware bias map must come between: then Conv -> bias map (a
    `Rescaling` offset) -> Activation.
    """
    first, last = segment[0], segment[-1]
    names = [n.layer.name for n in segment]
    source = first.input_refs[0]
    activation = last.layer.activation
    bias_map = op.bias if op.has_bias_map and not is_uniform(op.bias) else None
    bias = op.bias if not op.has_bias_map else op.bias.reshape(-1, op.bias.shape[-1])[0]
    dtype = last.layer.dtype_policy
    name = rewrite.unique_name(graph, "_".join(n.layer.name for n in (first, last)))
    common = dict(
        use_bias=bias_map is None,
        activation=activation if bias_map is None else "linear",
        dtype=dtype,
        name=name,
    )
    if all(kinds.is_dense(n.layer) for n in segment):
        kernel = op.kernel.reshape(op.kernel.shape[-2:])
        layer = keras.layers.Dense(kernel.shape[-1], **common)
    else:
        kernel = op.kernel
        conv = keras.layers.Conv1D if op.rank == 1 else keras.layers.Conv2D
        layer = conv(
            kernel.shape[-1],
            kernel.shape[:-2],
            strides=op.strides,
            padding=op.padding,
            **common,
        )
    weights = [rewrite.cast_like(kernel, layer)]
    for node in segment[:-1]:
        rewrite.remove(graph, node)
    if bias_map is None:
        weights.append(rewrite.cast_like(bias, layer))
        rewrite.set_layer(graph, last, layer, weights, args=(source,))
    else:
        linear = graph.add(
            layer, (source,), shapes=last.shapes, dtypes=last.dtypes, weights=weights
        )
        adder = bias_map_layer(
            rewrite.cast_like(bias_map, layer),
            dtype=dtype,
            name=rewrite.unique_name(graph, name + "_bias"),
        )
        last_args = (Ref(linear.id),)
        if kinds.activation_name(activation) != "linear":
            biased = graph.add(adder, last_args, shapes=last.shapes, dtypes=last.dtypes)
            adder, last_args = (
                keras.layers.Activation(
                    activation,
                    dtype=dtype,
                    name=rewrite.unique_name(graph, name + "_act"),
                ),
                (Ref(biased.id),),
            )
        rewrite.set_layer(graph, last, adder, args=last_args)
    detail = "exact" if op.exact else "interior-only (border differs)"
    if bias_map is not None:
        detail += ", border-aware bias map"
    journal.did("merge", names, f"{len(segment)} -> 1 layer, {detail}")
