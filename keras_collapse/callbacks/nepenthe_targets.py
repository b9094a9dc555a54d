"""What NEPENTHE's rounds prune in one layer: whole channels (at the
BatchNormalization, else the kernel columns) or single kernel weights, how
much is left, and how much one round may take."""

import math

import keras
import numpy as np

from keras_collapse.actions.prune import output_channels
from keras_collapse.actions.prune import prune_by_count
from keras_collapse.collapsible import sync_training_state
from keras_collapse.masks import held_mask
from keras_collapse.masks import hold_at_zero
from keras_collapse.scores.statistics import binary_entropy

_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
# The most of what a layer has left that one round may prune: uncapped, the
# softmax gave the lowest-score layer its whole kernel in the first round of
# a 6-epoch fine-tune (training accuracy 0.099 until the rollback).
LAYER_CAP = 0.5


class PruneTarget:
    """What the rounds of one candidate prune, and how much is left.

    "channels": whole output channels, each made exactly 0 (always OFF,
    entropy 0; the surgery can cut it): behind a BatchNormalization its
    gamma and beta are held at zero (the BN re-normalizes whatever is left
    of a pruned kernel, so single weights do not move its channels' states:
    0.99 bits at 86 % kernel sparsity on a digits CNN), without one the
    kernel column and bias. Only channels not at zero entropy yet are
    pruned, the smallest first (|gamma|, else the column's mean |w|); the
    budget is counted in channels.

    "weights": single kernel weights, smallest |w| first (the paper's
    unstructured pruning); a depthwise kernel (a few weights a channel)
    loses at most `LAYER_CAP` of each channel's remaining weights in one
    round.
    """

    def __init__(self, layer, batchnorm, where):
        self.layer, self.where = layer, where
        self.batchnorm = (
            batchnorm if batchnorm is not None and batchnorm.scale else None
        )
        self.size = int(np.prod(tuple(layer.kernel.shape)))
        self.channels = output_channels(layer)
        self.per_channel = self.size // self.channels
        self.depthwise = isinstance(layer, _DEPTHWISE)

    @classmethod
    def of(cls, entry, granularity):
        layer, bn = entry.layer, entry.batchnorm
        if granularity == "weights":
            return cls(layer, None, "weights")
        if bn is not None and int(bn.gamma.shape[0] if bn.scale else -1) != (
            output_channels(layer)
        ):
            bn = None  # no gamma along the channels: the kernel columns
        return cls(layer, bn, "channels")

    @property
    def label(self):
        return f"'{(self.batchnorm or self.layer).name}'"

    def held(self):
        """Per channel ("channels") or per kernel weight: what is pruned."""
        if self.where == "weights":
            return held_mask(self.layer, "kernel")
        if self.batchnorm is not None:
            return held_mask(self.batchnorm, "gamma")
        return held_mask(self.layer, "kernel").reshape(-1, self.channels).all(axis=0)

    def pruned(self):
        """The fraction pruned (of the channels, or of the kernel)."""
        return float(self.held().mean())

    def remaining(self):
        """What is left to prune: channels, or kernel weights."""
        return int((~self.held()).sum())

    def cap(self):
        """The most one round may prune: `LAYER_CAP` of what is left."""
        return math.ceil(LAYER_CAP * self.remaining())

    def magnitude(self):
        """Mean |w| over the kernel weights left (of the channels left);
        behind a BatchNormalization, mean |gamma| over the channels left:
        the BN makes the kernel's scale meaningless (the smallest kernels,
        of the widest layers, drew the whole budget)."""
        if self.batchnorm is not None:
            gamma = np.abs(keras.ops.convert_to_numpy(self.batchnorm.gamma))
            left = gamma[~self.held()]
            return float(np.mean(left)) if left.size else 0.0
        kernel = np.abs(keras.ops.convert_to_numpy(self.layer.kernel))
        if self.where == "channels":
            columns = kernel.reshape(-1, self.channels)[:, ~self.held()]
            return float(np.mean(columns)) if columns.size else 0.0
        free = ~self.held()
        return float(np.mean(kernel[free])) if free.any() else 0.0

    def prune(self, model, count, stats, zero_entropy):
        """Prunes about `count` weights (whole channels: `count` over the
        weights a channel has, rounded); returns (pruned, records)."""
        if count <= 0:
            return 0, []
        if self.where == "weights":
            cap = LAYER_CAP if self.depthwise else None
            done = prune_by_count(model, {self.layer.name: count}, channel_cap=cap)
            return sum(d.pruned for d in done), done
        held = self.held()
        n = min(count, self.cap())
        chosen = np.flatnonzero(~held & (binary_entropy(stats.p_on) > zero_entropy))
        if self.batchnorm is not None:
            size = np.abs(keras.ops.convert_to_numpy(self.batchnorm.gamma))
        else:
            kernel = np.abs(keras.ops.convert_to_numpy(self.layer.kernel))
            size = kernel.reshape(-1, self.channels).mean(axis=0)
        chosen = chosen[np.argsort(size[chosen], kind="stable")][:n]
        if not len(chosen):
            return 0, []
        mask = np.zeros(self.channels, bool)
        mask[chosen] = True
        sync_training_state(model)
        if self.batchnorm is not None:
            records = [hold_at_zero(self.batchnorm, "gamma", mask)]
            if self.batchnorm.center:
                records.append(hold_at_zero(self.batchnorm, "beta", mask))
            return len(chosen), records
        return len(chosen), zero_columns(self.layer, mask)


def zero_columns(layer, off):
    """Holds the kernel column (and bias) of each `off` channel at zero."""
    shape = tuple(layer.kernel.shape)
    if output_channels(layer) != len(off):
        return []
    columns = np.broadcast_to(off, (int(np.prod(shape)) // len(off), len(off)))
    records = [hold_at_zero(layer, "kernel", columns.reshape(shape))]
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        records.append(hold_at_zero(layer, "bias", off))
    return records
