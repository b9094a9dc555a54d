"""Cutting channels that are exactly zero out of the layers that make and read them.

TLC switches a channel OFF by zeroing its BatchNorm gamma and beta; once the BN
is folded into the Conv/Dense before it, that channel's kernel slice and bias
are zero, so the channel is zero for every input. Removing it from the layer
that makes it and from the input of every layer that reads it leaves the
outputs unchanged and makes both layers narrower.

Channels are handled in *channel groups*: tensors tied channel by channel
through layers that act on each channel alone (activations, pooling, padding,
dropout...) and through residual `Add`s (and `Subtract`, `Average`,
`Maximum`, `Minimum`). Channel c of a group is cut from
every tensor of the group at once, and only when nothing that stays in the
model depends on it:

- every tensor of the group is made by a member of the group or by a
  Conv/Dense/DepthwiseConv whose output channels can be dropped (not by a
  model input, a BatchNormalization, a custom layer...);
- every layer outside the group that reads one of its tensors is a Conv/Dense,
  which reads channel c as exactly zero there (its kernel slice is dropped),
  or a DepthwiseConv whose outputs for channel c are cut from their own group
  in turn (a depthwise's outputs are tied to its input channels);
- no tensor of the group is a model output or read by anything else
  (Flatten, Reshape, Concatenate, Multiply, a custom layer...).

A channel is exactly zero where it comes from a layer whose kernel slice and
bias are zero and whose fused activation maps 0 to 0 (relu, gelu, silu, tanh,
elu... but not sigmoid), and stays zero through members that map 0 to 0
(checked by evaluating them at 0) and through a merge whose inputs are all
zero there.
"""

import collections
import dataclasses

import numpy as np

from keras_collapse.graph import Ref
from keras_collapse.graph import rewrite
from keras_collapse.surgery.passes.channel_members import channels
from keras_collapse.surgery.passes.channel_members import describe
from keras_collapse.surgery.passes.channel_members import is_elementwise
from keras_collapse.surgery.passes.channel_members import keeps_zero
from keras_collapse.surgery.passes.channel_members import linear_parts
from keras_collapse.surgery.passes.channel_members import member_kind
from keras_collapse.surgery.passes.channel_members import name_of
from keras_collapse.surgery.passes.channel_members import slice_linear
from keras_collapse.surgery.passes.channel_members import slice_member
from keras_collapse.surgery.passes.channel_members import weights_of
from keras_collapse.surgery.passes.channel_members import zero_at_zero


def remove_dead_channels(graph, journal):
    """Removes the channels that are exactly zero, where that is exact.

    Run after BatchNormalization has been folded into the layers before it.
    Changed layers are replaced by new ones built from their configs, with
    fewer `filters`/`units` and sliced weights; a replacement keeps the name
    of the layer it replaces (that layer leaves the graph: layers shared by
    several calls are never cut). Per-channel weights of activations between
    (a PReLU or collapsible activation with one alpha per channel) are sliced
    too.

    Args:
        graph: `Graph`, edited in place (unreachable nodes are pruned first).
        journal: `Journal`; gets one `"cut_channels"` entry per channel group
            cut (the layers making it, then the layers reading it, and
            "k of n channels"), and a skip entry, with the reason, per group
            whose zero channels had to stay.

    Returns:
        int, the number of channels cut, counted once per channel group: a
        channel cut from both branches of a residual `Add` counts once; the
        outputs of a DepthwiseConv that go with a cut input channel count
        apart (they form a group of their own).

    Example:

    >>> from keras_collapse.graph import Graph
    >>> from keras_collapse.surgery.passes.dead_channels import (
    ...     remove_dead_channels,
    ... )
    >>> from keras_collapse.surgery.passes.journal import Journal
    >>> x = keras.Input((4,))
    >>> first = keras.layers.Dense(8)
    >>> h = keras.layers.ReLU()(first(x))
    >>> model = keras.Model(x, keras.layers.Dense(4)(h))
    >>> kernel, bias = first.get_weights()  # the bias starts at zero
    >>> kernel[:, [2, 5]] = 0.0  # channels 2 and 5: zero for every input
    >>> first.set_weights([kernel, bias])
    >>> graph = Graph.from_model(model)
    >>> remove_dead_channels(graph, Journal())
    2
    >>> graph.to_model().layers[1].units  # 8 - 2
    6
    """
    graph.prune()
    analysis = _Analysis(graph)
    analysis.constrain()
    cut = analysis.apply()
    analysis.report(journal)
    return cut


@dataclasses.dataclass
class _Group:
    """Tensors tied channel by channel, and what may be cut from all of them."""

    refs: list
    size: int | None = None
    cut: np.ndarray | None = None  # channels that may be cut
    dead: np.ndarray | None = None  # zero kernel slice and bias at a source
    sources: list = dataclasses.field(default_factory=list)
    readers: list = dataclasses.field(default_factory=list)  # (node, ref)
    reasons: list = dataclasses.field(default_factory=list)

    def restrict(self, allowed, reason):
        """Narrows the channels to cut to `allowed`; notes `reason` when a
        dead channel has to stay. Returns whether anything changed."""
        narrowed = self.cut & allowed
        if (self.dead & self.cut & ~narrowed).any() and reason not in self.reasons:
            self.reasons.append(reason)
        changed = (narrowed != self.cut).any()
        self.cut = narrowed
        return changed

    def block(self, reason):
        self.restrict(np.zeros(self.size, bool), reason)


class _Analysis:
    """The channel groups of a graph, and which of their channels to cut."""

    def __init__(self, graph):
        self.graph = graph
        self.nodes = graph.layer_nodes()
        self.readers = rewrite.readers(graph)
        self.uses = collections.Counter(id(n.layer) for n in self.nodes)
        self.parts = {n.id: linear_parts(n) for n in self.nodes}
        self.members = {}
        for node in self.nodes:
            kind = member_kind(graph, node)
            if kind:
                self.members[node.id] = kind
        self.zero = {}  # Ref -> bool per channel: exactly zero for every input
        self._find_zero_channels()
        self.groups = self._make_groups()
        self.group_of = {ref: g for g in self.groups for ref in g.refs}
        self.links = []  # (depthwise node, input group, output group)

    # ------------------------------------------------------------- zero values
    def _find_zero_channels(self):
        for node in self.nodes:
            size = channels(node.shapes)
            if size is None:
                continue
            ins = [self._zero_at(r, size) for r in node.input_refs]
            kind = self.members.get(node.id)
            parts = self.parts[node.id]
            if kind == "merge":
                mask = np.logical_and.reduce(ins)
            elif kind == "activation":
                mask = ins[0] & keeps_zero(node, size) if ins[0].any() else ins[0]
            elif kind:
                mask = ins[0]
            elif parts and parts.depthwise:
                mult = parts.kernel.shape[-1]
                inputs = np.repeat(
                    self._zero_at(node.input_refs[0], size // mult), mult
                )
                mask = (parts.zero_kernel | inputs) & parts.zero_bias
            elif parts:
                mask = parts.zero_kernel & parts.zero_bias
            else:
                continue
            if parts and mask.any():
                mask &= zero_at_zero(node.layer.activation)
            self.zero[Ref(node.id)] = mask

    def _zero_at(self, ref, size):
        mask = self.zero.get(ref)
        return (
            mask if mask is not None and mask.shape == (size,) else np.zeros(size, bool)
        )

    # ------------------------------------------------------------------ groups
    def _make_groups(self):
        parent = {}

        def find(ref):
            parent.setdefault(ref, ref)
            while parent[ref] != ref:
                parent[ref] = parent[parent[ref]]
                ref = parent[ref]
            return ref

        for node in self.nodes:
            find(Ref(node.id))
            for ref in node.input_refs:
                if node.id in self.members:
                    parent[find(ref)] = find(Ref(node.id))
                else:
                    find(ref)
        by_root = {}
        for ref in list(parent):
            by_root.setdefault(find(ref), _Group(refs=[])).refs.append(ref)
        return list(by_root.values())

    def constrain(self):
        """Decides each group's cut, then ties groups through depthwise convs."""
        for group in self.groups:
            self._constrain(group)
        self._tie_depthwise()
        for group in self.groups:
            if group.size and group.cut.all():
                allowed = np.arange(group.size) > 0
                group.restrict(allowed, "every channel could go; channel 0 stays")
        self._tie_depthwise()  # narrowing only: no group can be emptied again

    def _constrain(self, group):
        sizes = {
            channels(self.graph.producer(r).shapes) if r.index == 0 else None
            for r in group.refs
        }
        group.size = sizes.pop() if len(sizes) == 1 else None
        if group.size is None:
            group.size = 0
            group.cut = group.dead = np.zeros(0, bool)
            return
        group.cut = np.ones(group.size, bool)
        group.dead = np.zeros(group.size, bool)
        for ref in group.refs:
            node = self.graph.producer(ref)
            if node.id not in self.members:
                group.sources.append(node)
                parts = self.parts.get(node.id)
                if parts is not None:
                    group.dead |= parts.zero_kernel & parts.zero_bias
        for source in group.sources:
            self._check_source(group, source)
        for ref in group.refs:
            node = self.graph.producer(ref)
            if node.id in self.members:
                self._check_member(group, node)
            for reader in self.readers.of(ref):
                self._check_reader(group, ref, reader)

    def _check_source(self, group, node):
        parts = self.parts.get(node.id)
        if node.is_input:
            group.block("fed by a model input")
        elif parts is None:
            group.block(f"made by {describe(node)}, whose channels cannot be cut")
        elif self.uses[id(node.layer)] > 1:
            group.block(f"layer '{node.layer.name}' is shared")
        elif not is_elementwise(node.layer.activation):
            # Dropping an output of, e.g., a fused softmax changes the others.
            group.block(
                f"the fused activation of '{node.layer.name}' is not a stock "
                "elementwise one"
            )
        elif parts.depthwise and len(node.input_refs) != 1:
            group.block(f"made by {describe(node)}, which has several inputs")
        elif parts.depthwise:
            # Its outputs go with its input channels, cut (or not) in the
            # input's group, where `_check_reader` vets it as a reader.
            self.links.append((node, self.group_of[node.input_refs[0]], group))

    def _check_member(self, group, node):
        weights = weights_of(node)
        if not weights:
            return
        if self.uses[id(node.layer)] > 1:
            group.block(f"layer '{node.layer.name}' is shared")
        elif any(
            np.ndim(w) and np.shape(w)[-1] not in (1, group.size) for w in weights
        ):
            group.block(f"weights of {describe(node)} do not follow the channels")

    def _check_reader(self, group, ref, reader):
        if reader is None:
            group.block("reaches a model output")
            return
        if self.members.get(reader.id):
            return  # in the group: Ref(reader.id) was tied to `ref`
        parts = self.parts[reader.id]
        if (
            parts is None
            or reader.input_refs != [ref]
            or not reader.args
            or reader.args[0] != ref
            or parts.kernel.shape[-2] != group.size
        ):
            group.block(f"read by {describe(reader)}")
        elif self.uses[id(reader.layer)] > 1:
            group.block(f"layer '{reader.layer.name}' is shared")
        elif parts.depthwise:
            group.readers.append((reader, ref))  # tied in `_tie_depthwise`
        else:
            group.readers.append((reader, ref))
            group.restrict(
                self._zero_at(ref, group.size),
                f"not exactly zero where '{reader.layer.name}' reads them",
            )

    def _tie_depthwise(self):
        """A depthwise input channel goes iff all its outputs go: narrows both
        sides until they agree."""
        changed = True
        while changed:
            changed = False
            for node, before, after in self.links:
                reason = f"tied through '{node.layer.name}' to channels that stay"
                mult = self.parts[node.id].kernel.shape[-1]
                if after.size != before.size * mult:
                    changed |= before.restrict(np.zeros(before.size, bool), reason)
                    changed |= after.restrict(np.zeros(after.size, bool), reason)
                    continue
                allowed = after.cut.reshape(before.size, mult).all(axis=1)
                changed |= before.restrict(allowed, reason)
                changed |= after.restrict(np.repeat(before.cut, mult), reason)

    # ---------------------------------------------------------------- applying
    def apply(self):
        """Rewrites the nodes of the groups with channels to cut; returns how
        many channels were cut."""
        keep_in, keep_out = {}, {}
        for group in self.groups:
            if not group.cut.any():
                continue
            keep = np.flatnonzero(~group.cut)
            for ref in group.refs:
                node = self.graph.producer(ref)
                rewrite.resize_channels(node, len(keep))
                if node.id in self.members:
                    slice_member(self.graph, node, group.size, keep)
                else:
                    keep_out[node.id] = keep
            for reader, _ in group.readers:
                keep_in[reader.id] = keep
        for node_id in set(keep_in) | set(keep_out):
            node = self.graph.nodes[node_id]
            keeps = keep_in.get(node_id), keep_out.get(node_id)
            slice_linear(self.graph, node, self.parts[node_id], *keeps)
        return int(sum(group.cut.sum() for group in self.groups))

    def report(self, journal):
        for group in self.groups:
            names = [name_of(n) for n in group.sources if not n.is_input]
            names += [reader.layer.name for reader, _ in group.readers]
            names = list(dict.fromkeys(names))
            if group.cut.any():
                journal.did(
                    "cut_channels",
                    names,
                    f"{int(group.cut.sum())} of {group.size} channels",
                )
            kept = np.flatnonzero(group.dead & ~group.cut)
            if kept.size:
                journal.skip(
                    "cut_channels",
                    names,
                    f"zero channels {kept.tolist()} kept: " + "; ".join(group.reasons),
                )
