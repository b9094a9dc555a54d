"""Unstructured magnitude pruning of the layers before collapsible
activations: the pruning half of NEPENTHE.

NEPENTHE prunes the Conv/Dense kernel that feeds each activation, more where
the activation's entropy is low, until the activation is always ON or OFF
and can be linearized. Here are its parts that need no callback:
`prunable_layers` (which kernel belongs to which activation),
`prune_by_fraction` / `prune_by_count` (L1 magnitude, masks held at zero by
`masks.ZeroMask` while training goes on, saved with the model),
`sparsity`, and `allocate_budget` (the per-layer share of a round's budget).

A pruned weight is an exact zero in a kernel: folding and merging stay exact,
and `surgery` drops the masks from its result (they are training state).
"""

import collections.abc
import dataclasses
import math

import keras
import numpy as np

from keras_collapse.collapsible import sync_training_state
from keras_collapse.graph import Graph
from keras_collapse.linearize import rebuild_train_function
from keras_collapse.masks import held_mask
from keras_collapse.masks import hold_at_zero
from keras_collapse.passes import kinds
from keras_collapse.scores.pairs import find_pairs

# Exact types, as in passes/kinds.py: a subclass may use its kernel otherwise.
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


@dataclasses.dataclass
class Pruned:
    """What `prune_by_fraction` did to one layer; `undo()` takes it back.

    Attributes:
        layer: str, the layer's name.
        pruned: int, kernel entries this call set to zero and masked.
        remaining: int, entries not masked after it.
    """

    layer: str
    pruned: int
    remaining: int
    _model: object = dataclasses.field(default=None, repr=False)
    _held: object = dataclasses.field(default=None, repr=False)
    _indices: np.ndarray | None = dataclasses.field(default=None, repr=False)
    _values: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def undo(self):
        """Gives the entries this call pruned their values back and restores
        the kernel's constraint as it was before it (undo several calls in
        reverse order). Inside `fit`, call `sync_training_state(model)`
        first (JAX)."""
        if self._held is None:
            return
        layer = self._held.layer
        value = keras.ops.convert_to_numpy(layer.kernel).copy()
        value.ravel()[self._indices] = self._values
        layer.kernel.assign(value)
        self._held.undo()
        self._held = None
        rebuild_train_function(self._model)


@dataclasses.dataclass(frozen=True)
class Sparsity:
    """How much of each prunable kernel is masked (`sparsity`).

    Attributes:
        layers: dict, layer name -> fraction of its kernel masked.
        masked: dict, layer name -> masked entries.
        sizes: dict, layer name -> kernel entries.
        overall: float, masked entries over kernel entries, all layers.
    """

    layers: dict
    masked: dict
    sizes: dict
    overall: float

    @property
    def remaining(self):
        """dict, layer name -> entries not masked yet."""
        return {name: self.sizes[name] - self.masked[name] for name in self.sizes}


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

    >>> [p.layer.name for p in prunable_layers(model) if p.layer is not None]
    ['conv2d', 'conv2d_1']
    """
    graph = Graph.from_model(model)
    readers = graph.consumers()
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
    if readers.get(refs[0], []) != [node]:
        return skip(f"the output of '{name}' has other readers")
    if getattr(layer, "lora_rank", None):
        return skip(f"'{name}' has LoRA (Keras forbids kernel constraints there)")
    if getattr(layer, "quantization_mode", None):
        return skip(f"'{name}' is quantized")
    return Prunable(pair.activation, layer, pair.batchnorm, None)


def prune_by_fraction(model, fractions):
    """Prunes a fraction of the remaining kernel weights of chosen layers,
    smallest |w| first; safe inside `fit`.

    For each layer, `round(fraction * remaining)` of the kernel entries not
    masked yet (halves round up) are set to zero and held there by a
    `ZeroMask` while training continues, on top of earlier masks. Order:
    smallest magnitude first; equal magnitudes in flat (C order) index
    order. The train function is rebuilt when a mask changed.

    Args:
        model: the `keras.Model` (training or not).
        fractions: dict, layer name -> fraction in [0, 1] of its remaining
            (not yet masked) kernel weights to prune. Names are those of
            `prunable_layers(model)`.

    Returns:
        list of `Pruned` (layer, pruned, remaining, `undo()`), in the order
        of `fractions`.

    Raises:
        ValueError: if `fractions` is not a dict, names a layer that is not
            in the model or not prunable, or holds a fraction outside [0, 1].

    Example:

    >>> done = keras_collapse.prune_by_fraction(model, {"conv2d": 0.2})
    >>> done[0].pruned, done[0].remaining
    (43, 173)
    """
    layers = _chosen(model, fractions, "fractions")
    counts = {}
    for name, fraction in fractions.items():
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float, np.integer, np.floating))
            or not 0 <= fraction <= 1
        ):
            raise ValueError(
                f"Expected a fraction in [0, 1] for layer '{name}'. Received: "
                f"{fraction!r}"
            )
        remaining = int((~held_mask(layers[name], "kernel")).sum())
        counts[name] = min(remaining, math.floor(float(fraction) * remaining + 0.5))
    return _prune(model, layers, counts)


def prune_by_count(model, counts, channel_cap=None):
    """`prune_by_fraction` with the number of weights to prune per layer
    (what `allocate_budget` gives), each at most the layer's remaining.

    Args:
        model: the `keras.Model`.
        counts: dict, layer name -> int, weights to prune.
        channel_cap: None, or a float in (0, 1]: no output channel (a
            column of the kernel: a depthwise kernel's kh x kw weights of
            one channel) loses more than `ceil(channel_cap * its
            remaining)` in this call; the smallest |w| that fit are taken,
            so a count may come out smaller. Defaults to `None`.

    Raises:
        ValueError: as `prune_by_fraction`, or for a count that is not an
            int in [0, remaining], or a `channel_cap` outside (0, 1].
    """
    if channel_cap is not None and (
        isinstance(channel_cap, bool)
        or not isinstance(channel_cap, (int, float, np.integer, np.floating))
        or not 0 < channel_cap <= 1
    ):
        raise ValueError(
            "`channel_cap` must be None or a number in (0, 1]. Received: "
            f"channel_cap={channel_cap!r}"
        )
    layers = _chosen(model, counts, "counts")
    for name, count in counts.items():
        remaining = int((~held_mask(layers[name], "kernel")).sum())
        if (
            isinstance(count, bool)
            or not isinstance(count, (int, np.integer))
            or not 0 <= count <= remaining
        ):
            raise ValueError(
                f"Expected an int in [0, {remaining}] (its remaining weights) "
                f"for layer '{name}'. Received: {count!r}"
            )
    return _prune(
        model, layers, {name: int(c) for name, c in counts.items()}, channel_cap
    )


def _chosen(model, choice, what):
    if not isinstance(choice, collections.abc.Mapping):
        raise ValueError(
            f"`{what}` must be a dict of layer name -> value. Received: "
            f"{what}={choice!r} of type {type(choice).__name__}"
        )
    found = prunable_layers(model)
    layers = {p.layer.name: p.layer for p in found if p.layer is not None}
    names = {
        getattr(n.layer, "name", None) for n in Graph.from_model(model).layer_nodes()
    }
    for name in choice:
        if name in layers:
            continue
        if name in names:
            raise ValueError(
                f"Layer '{name}' is not prunable: expected one of the "
                f"Conv/Dense layers feeding a collapsible activation "
                f"({sorted(layers)}). Received: {name!r}"
            )
        raise ValueError(
            f"Expected names of prunable layers of model '{model.name}' (one of "
            f"{sorted(layers)}). Received: {name!r}, not a layer of the model"
        )
    return layers


def _prune(model, layers, counts, channel_cap=None):
    sync_training_state(model)
    done = []
    for name, count in counts.items():
        layer = layers[name]
        held = held_mask(layer, "kernel")
        free = np.flatnonzero(~held.ravel())
        if count == 0:
            done.append(Pruned(name, 0, len(free)))
            continue
        value = keras.ops.convert_to_numpy(layer.kernel)
        magnitude = np.abs(value.ravel()[free])
        order = free[np.argsort(magnitude, kind="stable")]
        if channel_cap is None:
            chosen = order[:count]
        else:
            chosen = _within_channel_cap(
                order, held, output_channels(layer), channel_cap, count
            )
            count = len(chosen)
            if count == 0:
                done.append(Pruned(name, 0, len(free)))
                continue
        mask = np.zeros(held.size, bool)
        mask[chosen] = True
        values = value.ravel()[chosen].copy()
        record = hold_at_zero(layer, "kernel", mask.reshape(held.shape))
        done.append(
            Pruned(name, count, len(free) - count, model, record, chosen, values)
        )
    if any(d.pruned for d in done):
        rebuild_train_function(model)
    return done


def _within_channel_cap(order, held, channels, channel_cap, count):
    """The first `count` flat indices of `order` (smallest |w| first) such
    that no output channel loses more than `ceil(channel_cap * its
    remaining)`; channel of a flat index: `index % channels`."""
    left = (~held.reshape(-1, channels)).sum(axis=0)
    allowance = np.ceil(channel_cap * left).astype(np.int64)
    column = order % channels
    # Each entry's rank among its channel's entries, in `order`.
    by_channel = np.argsort(column, kind="stable")
    starts = np.searchsorted(column[by_channel], np.arange(channels))
    rank = np.empty(len(order), np.int64)
    rank[by_channel] = np.arange(len(order)) - starts[column[by_channel]]
    return order[rank < allowance[column]][:count]


def output_channels(layer):
    """The output channels of a kernel layer: the kernel's last axis (a
    depthwise kernel's last two: input channels x multiplier, in Keras'
    output order). A flat kernel index `i` feeds channel `i % channels`."""
    shape = tuple(layer.kernel.shape)
    depthwise = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    if isinstance(layer, depthwise):
        return int(shape[-2]) * int(shape[-1])
    return int(shape[-1])


def sparsity(model):
    """The fraction of each prunable kernel held at zero by a mask.

    Counts masked entries (`ZeroMask`), not weights that happen to be zero.

    Args:
        model: a `keras.Model`.

    Returns:
        `Sparsity`: `.layers` (name -> fraction), `.masked`, `.sizes`,
        `.remaining` (name -> count), `.overall` (all prunable kernels).

    Example:

    >>> keras_collapse.sparsity(model).overall
    0.2
    """
    masked, sizes = {}, {}
    for entry in prunable_layers(model):
        if entry.layer is not None:
            mask = held_mask(entry.layer, "kernel")
            masked[entry.layer.name], sizes[entry.layer.name] = (
                int(mask.sum()),
                int(mask.size),
            )
    total = sum(sizes.values())
    return Sparsity(
        layers={n: masked[n] / sizes[n] if sizes[n] else 0.0 for n in sizes},
        masked=masked,
        sizes=sizes,
        overall=sum(masked.values()) / total if total else 0.0,
    )


def allocate_budget(scores, remaining, budget):
    """Shares one NEPENTHE round's pruning budget between layers.

    Layer l gets the share `softmax(S / s)_l` of `budget`, with
    `S = sum_k s_k`: the lower its score (entropy), the more it is pruned.
    A share is capped at what the layer has left (`remaining[l]`); the
    excess goes to the layers not capped, in proportion to their softmax
    weights, until no share exceeds its cap. The real shares are rounded by
    largest remainder (ties to the lower index) without passing a cap, so the
    counts sum to exactly `min(budget, sum(remaining))`.

    A zero score (entropy 0: the activation is always ON or OFF) would get
    an infinite weight; such a layer is to be linearized, not pruned, so the
    caller leaves it out. Scores must be finite and > 0.

    Args:
        scores: dict name -> score, or a 1-D sequence of scores (> 0).
        remaining: the same keys / length: ints >= 0, weights each layer
            can still lose.
        budget: int >= 0, weights to prune this round (NEPENTHE:
            the prune fraction times `sum(remaining)`, rounded).

    Returns:
        dict name -> int for a dict `scores`, else an int64 array.

    Raises:
        ValueError: for non-positive or non-finite scores, negative or
            non-integer `remaining` / `budget`, or mismatched keys / lengths.

    Example:

    >>> allocate_budget({"a": 1.0, "b": 2.0}, {"a": 100, "b": 100}, 10)
    {'a': 8, 'b': 2}
    """
    keys = None
    if isinstance(scores, collections.abc.Mapping):
        keys = list(scores)
        if not isinstance(remaining, collections.abc.Mapping) or set(remaining) != set(
            keys
        ):
            raise ValueError(
                f"`remaining` must be a dict with the keys of `scores` "
                f"({sorted(keys)}). Received: {remaining!r}"
            )
        s = np.array([scores[k] for k in keys], dtype="float64")
        caps = [remaining[k] for k in keys]
    else:
        s = np.asarray(scores, dtype="float64")
        caps = list(np.asarray(remaining).ravel()) if np.ndim(remaining) else None
        if s.ndim != 1 or caps is None or len(caps) != len(s):
            raise ValueError(
                "`scores` and `remaining` must be 1-D of the same length. "
                f"Received: scores={scores!r}, remaining={remaining!r}"
            )
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(
            "Expected finite scores > 0 (leave out layers of zero entropy: "
            f"they are linearized, not pruned). Received: {scores!r}"
        )
    if any(
        isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0
        for c in caps
    ):
        raise ValueError(f"Expected ints >= 0 in `remaining`. Received: {remaining!r}")
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, np.integer))
        or budget < 0
    ):
        raise ValueError(f"Expected an int >= 0 for `budget`. Received: {budget!r}")
    caps = np.array(caps, dtype=np.int64)
    counts = _allocate(s, caps, int(budget))
    if keys is None:
        return counts
    return {k: int(c) for k, c in zip(keys, counts)}


def _allocate(s, caps, budget):
    target = min(budget, int(caps.sum()))
    shares = np.zeros(len(s))
    if target == 0:
        return np.zeros(len(s), np.int64)
    logits = s.sum() / s
    free = np.ones(len(s), bool)
    left = float(target)
    while True:
        z = logits[free] - logits[free].max()  # stable softmax over the free
        weights = np.exp(z) / np.exp(z).sum()
        share = left * weights
        over = share > caps[free] * (1 + 1e-12) + 1e-9  # not by round-off
        if not over.any():
            shares[free] = share
            break
        index = np.flatnonzero(free)[over]
        shares[index] = caps[index]
        left -= float(caps[index].sum())
        free[index] = False
        if not free.any():
            break
    counts = np.minimum(np.floor(shares).astype(np.int64), caps)
    short = target - int(counts.sum())
    if short > 0:
        fraction = np.where(counts < caps, shares - counts, -np.inf)
        order = np.argsort(-fraction, kind="stable")
        counts[order[:short]] += 1
    return counts
