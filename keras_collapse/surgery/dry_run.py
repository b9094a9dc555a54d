"""Dry runs: the surgery's own passes on a copy of a model's graph, with
chosen activations assumed linear, and what the result would cost.

`merge_units` (`keras_collapse.surgery.units`) asks a `DryRun` what each
group of activations buys; a `MergeUnit` is one answer.
"""

import dataclasses
import math

import keras
import numpy as np

from keras_collapse.graph import Graph
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite
from keras_collapse.graph.channel_moments import channel_axis
from keras_collapse.surgery.cost_models import MacCostModel
from keras_collapse.surgery.cost_models import layer_overhead
from keras_collapse.surgery.cost_models import price
from keras_collapse.surgery.passes.journal import Journal
from keras_collapse.surgery.passes.merge import layer_kind
from keras_collapse.surgery.passes.merge import positions
from keras_collapse.surgery.passes.pipeline import simplify

OBJECTIVES = ("activations", "depth", "latency")


def check_objective(objective):
    """`objective` if it is one of `OBJECTIVES`, else a ValueError."""
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise ValueError(
            f"`objective` must be one of {list(OBJECTIVES)}. Received: "
            f"objective={objective!r}"
        )
    return objective


@dataclasses.dataclass(frozen=True)
class MergeUnit:
    """A group of activations whose joint linearization the surgery turns
    into a merge, and what that saves.

    Attributes:
        activations: tuple of the activation layer names.
        layers: int, layers the surgery removes besides the activations
            themselves (merged Conv/Dense, absorbed `Add`, folded BN).
        depth: int, how much the real depth (weight layers on the longest
            path) falls; 0 for a merge off the longest path.
        params: int, parameters saved (negative: the merge adds some).
        macs: int, multiply-accumulates saved per sample.
        latency: float, cost saved under the cost model (MACs by default).
        merges: tuple of str, what the dry run did ("merge: a, b, c").
    """

    activations: tuple
    layers: int
    depth: int
    params: int
    macs: int
    latency: float
    merges: tuple = ()

    def gain(self, objective):
        """What this unit buys under `objective` ("depth": layers removed,
        or the real depth saved when more (a merge that leaves a bias map
        behind removes a weight layer, not a layer); "latency": cost saved;
        "activations": 1 per member)."""
        check_objective(objective)
        if objective == "depth":
            return float(max(self.layers, self.depth))
        if objective == "latency":
            return float(self.latency)
        return float(len(self.activations))

    def buys(self, objective):
        return self.gain(objective) > 0

    @property
    def saves(self):
        """Whether the surgery's result is smaller for it: fewer layers, less
        depth, fewer MACs or parameters (a channel cut counts)."""
        return max(self.layers, self.depth, self.macs, self.params) > 0


class DryRun:
    """The surgery's passes on a copy of a model's graph, with chosen
    activations assumed linear. The model is never modified: the graph is
    read once, and each run edits a copy of its simplified form.

    Args:
        model: a collapsible Functional or Sequential `keras.Model`.
        exact: bool, the surgery's `exact`. Defaults to `True`.
        cost_model: the surgery's cost model. Defaults to `MacCostModel()`.
        cut_dead_channels: bool, the surgery's. Defaults to `True`.
    """

    def __init__(self, model, *, exact=True, cost_model=None, cut_dead_channels=True):
        self.exact = exact
        self.cost_model = cost_model or MacCostModel()
        self.cut_dead_channels = cut_dead_channels
        self.runs = 0
        graph = Graph.from_model(model)
        self.candidates = _nonlinear_collapsible(graph)
        # Channels of each collapsible activation (what an `off` mask
        # covers), as in the model.
        self.channels = _channels(graph)
        self._names = {
            n.layer.name for n in graph.layer_nodes() if kinds.is_collapsible(n.layer)
        }
        # Simplified once: each dry run starts from here (the passes reach a
        # fixed point, so running them again on a copy with a few more
        # activations linear gives what they would give from the start).
        self.base_journal = Journal()
        self.base = self._simplify(graph, self.base_journal)
        self.base_cost = Cost.of(self.base, self.cost_model)

    def _simplify(self, graph, journal=None):
        simplify(
            graph,
            journal or Journal(),
            cost_model=self.cost_model,
            exact=self.exact,
            cut_dead_channels=self.cut_dead_channels,
        )
        return graph

    def activation_names(self):
        """The names of the model's collapsible activations."""
        return set(self._names)

    def run(self, names, off=None):
        """`(Cost, Journal, calls replaced)` of the surgery with activations
        `names` linear and, where `off` says, their always-OFF channels
        zeroed."""
        self.runs += 1
        graph = self.base.copy()
        names, off = set(names), off or {}
        replaced = 0
        for node in graph.layer_nodes():
            if kinds.is_collapsible(node.layer) and node.layer.name in names:
                mask = off.get(node.layer.name)
                if mask is not None and np.any(mask):
                    _zero_input_channels(graph, node, np.asarray(mask, bool))
                identity = keras.layers.Identity(name=node.layer.name)
                rewrite.set_layer(graph, node, identity)
                replaced += 1  # a shared activation: one per call
        journal = Journal()
        # Dead channels are cut again even without new zeros (`off`): an
        # activation that does not map 0 to 0 (sigmoid, softplus) hid a
        # dead channel from that pass until it became the identity.
        simplify(
            graph,
            journal,
            cost_model=self.cost_model,
            exact=self.exact,
            cut_dead_channels=self.cut_dead_channels,
        )
        return Cost.of(graph, self.cost_model), journal, replaced

    def unit(self, names, off=None):
        """The `MergeUnit` of linearizing `names` together, with the merges
        it lets the surgery make; and the journal of the run."""
        cost, journal, replaced = self.run(names, off)
        base = self.base_cost
        merges = tuple(
            f"{e.kind}: {', '.join(e.layers)}"
            for e in journal.done
            if e.kind != "remove_identity"
        )
        unit = MergeUnit(
            activations=tuple(names),
            layers=base.layers - cost.layers - replaced,
            depth=base.depth - cost.depth,
            params=base.params - cost.params,
            macs=base.macs - cost.macs,
            latency=base.latency - cost.latency,
            merges=merges,
        )
        return unit, journal


@dataclasses.dataclass(frozen=True)
class Cost:
    """What the surgery's result would cost, read from a simplified graph.

    `layers` counts layer nodes (collapsible activations included, each
    call once), `params` the linear layers' weights (activations are emitted
    as plain layers), `macs`/`latency` the Conv/Depthwise/Dense nodes, as
    the merge pass prices them.
    """

    layers: int
    depth: int
    params: int
    macs: int
    latency: float

    @classmethod
    def of(cls, graph, cost_model):
        nodes = graph.layer_nodes()
        overhead = layer_overhead(cost_model)
        depth, macs, latency, params, seen = {}, 0, 0.0, 0, set()
        for node in graph.topological():
            below = max((depth[r.node] for r in node.input_refs), default=0)
            kind = None if node.is_input else layer_kind(node.layer)
            depth[node.id] = below + (kind is not None)
            if node.is_input:
                continue
            if kind is None:
                latency += overhead
            else:
                shape = _kernel_shape(node)
                count = positions(node.shape)
                macs += math.prod(shape) * count
                latency += price(
                    cost_model, kind, shape, count, f"layer '{node.layer.name}'"
                )
            if kinds.is_collapsible(node.layer):
                continue
            if node.weights is not None:
                params += sum(math.prod(w.shape) for w in node.weights)
            elif id(node.layer) not in seen:
                seen.add(id(node.layer))
                params += sum(
                    math.prod(w.shape) for w in getattr(node.layer, "weights", ())
                )
        outputs = keras.tree.flatten(graph.outputs)
        return cls(
            layers=len(nodes),
            depth=max(depth[r.node] for r in outputs),
            params=int(params),
            macs=int(macs),
            latency=float(latency),
        )


def _zero_input_channels(graph, node, mask):
    """Zeroes channels `mask` of what the Conv/Dense/Depthwise feeding `node`
    computes (its BatchNormalization folded in: what zeroing the BN's gamma
    and beta gives). Returns whether it could."""
    (ref,) = node.input_refs
    source = graph.producer(ref)
    if source.is_input or not kinds.is_linear_op(source.layer):
        return False
    kernel, bias = rewrite.kernel_and_bias(source)
    channels = bias.shape[-1]
    if mask.shape != (channels,):
        return False
    # A copy: the arrays may be the base graph's. Depthwise output channels
    # are input channel x multiplier, the kernel's last two axes.
    depthwise = kinds.is_depthwise(source.layer)
    zeroed = np.array(kernel).reshape(kernel.shape[: -2 if depthwise else -1] + (-1,))
    zeroed[..., mask] = 0.0
    kernel = zeroed.reshape(kernel.shape)
    bias = np.where(mask, 0.0, bias)
    rewrite.set_kernel_and_bias(graph, source, kernel, bias)
    return True


def _kernel_shape(node):
    if node.weights is not None:
        return tuple(node.weights[0].shape)
    return tuple(node.layer.kernel.shape)


def _channels(graph):
    """`{name: channels}` of the collapsible activations: the size of the
    channel axis of their input (what an `off` mask covers), where known."""
    found = {}
    for node in graph.layer_nodes():
        if not kinds.is_collapsible(node.layer) or len(node.input_refs) != 1:
            continue
        (ref,) = node.input_refs
        shape = graph.producer(ref).shapes[ref.index]
        size = shape[channel_axis(graph, ref)] if len(shape) > 1 else None
        name = node.layer.name
        if size is None or found.get(name, size) != size:
            found[name] = None  # unknown, or shared over different sizes
        else:
            found[name] = int(size)
    return found


def _nonlinear_collapsible(graph):
    names = []
    for node in graph.layer_nodes():
        layer = node.layer
        if kinds.is_collapsible(layer) and not layer.is_linear:
            if layer.name not in names:
                names.append(layer.name)
    return names
