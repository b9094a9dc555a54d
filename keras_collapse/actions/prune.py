"""Unstructured magnitude pruning of the layers before collapsible
activations: the pruning half of NEPENTHE.

NEPENTHE prunes the Conv/Dense kernel that feeds each activation, more where
the activation's entropy is low, until the activation is always ON or OFF
and can be linearized. Here are its parts that need no callback:
`prunable_layers` (which kernel belongs to which activation, in
`prunable`), `prune_by_fraction` / `prune_by_count` (L1 magnitude, masks
held at zero by `masks.ZeroMask` while training goes on, saved with the
model), `sparsity`, and `allocate_budget` (the per-layer share of a
round's budget, in `prune_budget`).

A pruned weight is an exact zero in a kernel: folding and merging stay exact,
and `surgery` drops the masks from its result (they are training state).
"""

import collections.abc
import dataclasses
import math

import keras
import numpy as np

from keras_collapse.actions.linearize import rebuild_train_function

# Re-exported: `keras_collapse.actions.prune` is where they were named first.
from keras_collapse.actions.prunable import Prunable  # noqa: F401
from keras_collapse.actions.prunable import output_channels
from keras_collapse.actions.prunable import prunable_layers
from keras_collapse.actions.prune_budget import allocate_budget  # noqa: F401
from keras_collapse.checks import check_fraction
from keras_collapse.checks import check_int
from keras_collapse.collapsible import sync_training_state
from keras_collapse.graph import Graph
from keras_collapse.masks import held_mask
from keras_collapse.masks import hold_at_zero


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

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(4, 3, name="conv"),
    ...     kc.CollapsibleActivation("relu", name="a"),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(5, name="fc"),
    ...     kc.CollapsibleActivation("relu", name="b"),
    ...     keras.layers.Dense(2)])
    >>> done = kc.prune_by_fraction(model, {"conv": 0.25})  # of 3 * 3 * 3 * 4
    >>> done[0].pruned, done[0].remaining
    (27, 81)
    """
    layers = _chosen(model, fractions, "fractions")
    counts = {}
    for name, fraction in fractions.items():
        check_fraction(f"fractions['{name}']", fraction, zero=True, one=True)
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
    check_fraction(
        "channel_cap",
        channel_cap,
        one=True,
        allow_none=True,
        what="the most of a channel's remaining weights one call prunes",
    )
    layers = _chosen(model, counts, "counts")
    for name, count in counts.items():
        remaining = int((~held_mask(layers[name], "kernel")).sum())
        check_int(
            f"counts['{name}']", count, 0, remaining, what="its remaining weights"
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


def sparsity(model):
    """The fraction of each prunable kernel held at zero by a mask.

    Counts masked entries (`ZeroMask`), not weights that happen to be zero.

    Args:
        model: a `keras.Model`.

    Returns:
        `Sparsity`: `.layers` (name -> fraction), `.masked`, `.sizes`,
        `.remaining` (name -> count), `.overall` (all prunable kernels).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(4, 3, name="conv"),
    ...     kc.CollapsibleActivation("relu", name="a"),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(5, name="fc"),
    ...     kc.CollapsibleActivation("relu", name="b"),
    ...     keras.layers.Dense(2)])
    >>> _ = kc.prune_by_fraction(model, {"conv": 0.25})
    >>> state = kc.sparsity(model)
    >>> state.layers
    {'conv': 0.25, 'fc': 0.0}
    >>> round(state.overall, 3)  # 27 of the 108 + 20 kernel weights
    0.211
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
