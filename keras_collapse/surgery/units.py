"""What linearizing buys: the merge units of a collapsible model.

An activation made linear saves depth only if the surgery can then merge
the layers on both sides of it. Whether it can is the surgery's business, so
the answer comes from the surgery's own passes (`passes.pipeline.simplify`),
run on a copy of the model's graph with the activations assumed linear: a
*dry run*. Nothing here restates a merge rule.

A *merge unit* is a smallest group of activations whose joint linearization
lets the dry run remove layers: on a MobileNetV2 block the expand and
depthwise activations together (1x1∘3x3 depthwise∘1x1 becomes one 3x3 conv),
never one of them alone (a lone one would make a dense 3x3 that costs more);
after a Dense, the activation alone (Dense∘Dense is one Dense); on a ResNet
basic block, nothing exact ("same" 3x3∘3x3 differs at the border).
"""

import dataclasses
import time

import numpy as np

from keras_collapse.checks import check_bool
from keras_collapse.checks import check_int
from keras_collapse.checks import check_model
from keras_collapse.graph import Ref
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite
from keras_collapse.report.potential import FIELDS
from keras_collapse.report.potential import format_number
from keras_collapse.report.potential import units_table
from keras_collapse.surgery.dry_run import OBJECTIVES
from keras_collapse.surgery.dry_run import DryRun
from keras_collapse.surgery.dry_run import MergeUnit
from keras_collapse.surgery.dry_run import check_objective

# Importable from here, where they have always been.
__all__ = [
    "OBJECTIVES",
    "MAX_UNIT_SIZE",
    "MergeUnit",
    "MergeUnits",
    "check_objective",
    "merge_units",
]

# Groups larger than this are not tried: a unit of the surgery's merges spans
# the activations of one block (MobileNetV2: 2).
MAX_UNIT_SIZE = 3


@dataclasses.dataclass
class MergeUnits:
    """`merge_units`' answer.

    Attributes:
        units: list of `MergeUnit`, the largest saving under the cost model
            first.
        candidates: list of the activation names considered.
        useless: dict, activation name -> why linearizing it (alone or in a
            group of up to `max_size`) lets the surgery merge nothing.
        exact: bool, the surgery mode the dry runs used.
        seconds: float, the time the analysis took.
        dry_runs: int, the dry runs made.
        total: dict, "depth", "params", "macs", "latency" of the BN-folded
            model the dry runs start from (what the surgery leaves with
            nothing more linearized): what each unit's saving is a share of.
    """

    units: list
    candidates: list
    useless: dict
    exact: bool
    seconds: float = 0.0
    dry_runs: int = 0
    dry_run: object = dataclasses.field(default=None, repr=False)

    def evaluate(self, names, off=None):
        """The `MergeUnit` of linearizing `names` together, with the channels
        `off[name]` (bool per channel) of each zeroed first, as TLC and
        EASIER do for always-OFF channels: a cut can make the unmerged
        layers the cheaper form, and the merge then does not happen.

        Args:
            names: list of collapsible activation names of the model.
            off: None, or a dict `{name: mask}` for some of `names`, each
                mask a bool per channel of that activation.

        Raises:
            ValueError: if `names` is not a list of the model's collapsible
                activations, or `off` has a key outside `names` or a mask
                of another length than the activation's channels.
        """
        names = self._check_names(names)
        off = self._check_off(names, off)
        unit, _ = self.dry_run.unit(tuple(names), off=off)
        return unit

    def _check_names(self, names):
        if isinstance(names, str) or not isinstance(
            names, (list, tuple, set, frozenset)
        ):
            raise ValueError(
                "`names` must be a list of collapsible activation names. "
                f"Received: names={names!r}"
            )
        known = self.dry_run.activation_names()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                "`names` must name collapsible activations of the model, among "
                f"{sorted(known)}. Received unknown name(s) {unknown} in "
                f"names={names!r}"
            )
        return list(names)

    def _check_off(self, names, off):
        if off is None:
            return None
        if not isinstance(off, dict):
            raise ValueError(
                "`off` must be None or a dict {activation name: bool mask per "
                f"channel}}. Received: off of type {type(off).__name__}"
            )
        checked = {}
        for name, mask in off.items():
            if name not in names:
                raise ValueError(
                    f"`off` must have keys among `names` {list(names)}. "
                    f"Received: a mask for {name!r}"
                )
            if mask is None:
                continue
            mask = np.asarray(mask)
            channels = self.dry_run.channels.get(name)
            if mask.ndim != 1 or (channels is not None and len(mask) != channels):
                expected = f"({channels},)" if channels is not None else "1-D"
                raise ValueError(
                    f"`off[{name!r}]` must be a bool mask with one entry per "
                    f"channel of '{name}': shape {expected}. Received: shape "
                    f"{mask.shape}"
                )
            checked[name] = mask.astype(bool)
        return checked

    def for_objective(self, objective):
        """The units that buy something under `objective`."""
        return [u for u in self.units if u.buys(objective)]

    def unit_of(self, name):
        """The first unit that holds activation `name`, or None."""
        return next((u for u in self.units if name in u.activations), None)

    def why_none(self, objective="depth"):
        """A sentence saying why no unit buys anything under `objective`,
        and what would help."""
        check_objective(objective)
        reasons = sorted(set(self.useless.values()))
        shown = "; ".join(reasons[:3]) or "no collapsible activation to linearize"
        hints = []
        if self.exact and any("border" in r for r in reasons):
            hints.append("`exact=False` (merges exact away from the border)")
        if any("cost more" in r or "costs more" in r for r in reasons):
            hints.append(
                "a cost model that prices layers, e.g. "
                "`MacCostModel(layer_overhead=...)`"
            )
        hints.append('objective="activations" (the papers\' count)')
        return (
            f"no group of up to {MAX_UNIT_SIZE} activations lets the surgery merge "
            f"anything under objective {objective!r} ({shown}). What would help: "
            + ", or ".join(hints)
            + "."
        )

    @property
    def total(self):
        """The cost of the BN-folded model the dry runs start from (BatchNorm
        folded, what is already linear merged): a dict of "depth", "params",
        "macs" (ints) and "latency" (float, under the cost model). A unit's
        saving is a share of it."""
        base = self.dry_run.base_cost
        total = {field: getattr(base, field) for field in FIELDS}
        total["latency"] = float(total["latency"])
        return total

    def table(self):
        """The units as a plain-text table, headed by a summary line: per
        unit the layers it removes, and the depth, params, MACs and latency
        it saves, each with its share of `total`."""
        total = self.total
        head = (
            f"{len(self.units)} merge unit(s) over {len(self.candidates)} "
            f"activation(s) ({'exact' if self.exact else 'inexact'} surgery, "
            f"{self.dry_runs} dry runs, {self.seconds:.2f} s)\n"
            f"In brackets: the share of the BN-folded model's depth "
            f"{total['depth']:,}, {total['params']:,} params, {total['macs']:,} "
            f"MACs, latency {format_number(total['latency'])}"
        )
        return units_table(self.units, total, title=head, layers=True)

    def __str__(self):
        return self.table()


def merge_units(
    model,
    *,
    candidates=None,
    exact=True,
    cost_model=None,
    cut_dead_channels=True,
    max_size=MAX_UNIT_SIZE,
):
    """What linearizing each group of activations would let the surgery
    merge, from dry runs of the surgery's own passes.

    Every candidate is tried alone; those that buy nothing alone are tried
    in connected groups (activations joined by a chain of linear layers) of
    up to `max_size`. A group is a unit when its dry run makes the result
    smaller besides removing the activations (fewer layers, less depth,
    fewer MACs or parameters: a merge, also one that leaves a bias map
    behind, or a channel cut) and none of its smaller groups does. Units are
    relative to the model as it is: activations already linear are part of
    the baseline. The model is not modified.

    Args:
        model: a Functional or Sequential `keras.Model` with collapsible
            activations (`make_collapsible`).
        candidates: activation names to consider, or None for every
            collapsible activation that is not linear yet. Defaults to None.
        exact: bool, the surgery's `exact`. Defaults to `True`.
        cost_model: the surgery's cost model (`MacCostModel`, or a measured
            one). Defaults to `MacCostModel()`.
        cut_dead_channels: bool, the surgery's. Defaults to `True`.
        max_size: int >= 1, the largest group tried. Defaults to 3.

    Returns:
        `MergeUnits`: `.units` (each a `MergeUnit` with the layers, depth,
        params, MACs and cost-model latency it saves), `.useless` (why the
        others buy nothing), `.table()`.

    Raises:
        ValueError: if the model cannot be read or `candidates` names a layer
            that is not a collapsible activation of it.

    Example:

    >>> x = keras.Input((8,))
    >>> h = keras.layers.Dense(16, activation="relu", name="fc1")(x)
    >>> model = keras.Model(x, keras.layers.Dense(4, name="fc2")(h))
    >>> model = keras_collapse.make_collapsible(model)
    >>> found = keras_collapse.merge_units(model)
    >>> [(u.activations, u.merges) for u in found.units]  # fc1_relu linear
    [(('fc1_relu',), ('merge: fc1, fc2',))]
    >>> print(found)  # one row per unit: activations, layers, depth, MACs
    1 merge unit(s) over 1 activation(s) ...
    """
    check_model("model", model)
    check_bool("exact", exact)
    check_bool("cut_dead_channels", cut_dead_channels)
    check_int("max_size", max_size, 1)
    start = time.perf_counter()
    dry = DryRun(
        model, exact=exact, cost_model=cost_model, cut_dead_channels=cut_dead_channels
    )
    names = dry.candidates
    if candidates is not None:
        if isinstance(candidates, str) or not all(
            isinstance(c, str) for c in candidates
        ):
            raise ValueError(
                "`candidates` must be a list of activation layer names or None. "
                f"Received: candidates={candidates!r}"
            )
        unknown = sorted(set(candidates) - set(names))
        if unknown:
            raise ValueError(
                f"`candidates` names layers that are not nonlinear collapsible "
                f"activations of model '{model.name}': {unknown}. Available: {names}"
            )
        names = [n for n in names if n in set(candidates)]
    units, useless = [], {}
    alone = set()
    for name in names:
        unit, journal = dry.unit((name,))
        if unit.saves:
            units.append(unit)
            alone.add(name)
        else:
            useless[name] = _why(journal, dry.base_journal)
    rest = [n for n in names if n not in alone]
    neighbours = _neighbours(dry.base, set(rest))
    found = []
    for size in range(2, max_size + 1):
        for group in _connected_groups(rest, neighbours, size):
            if any(set(f) <= set(group) for f in found):
                continue
            unit, _ = dry.unit(group)
            if unit.saves:
                units.append(unit)
                found.append(group)
    for group in found:
        for name in group:
            useless.pop(name, None)
    units.sort(key=lambda u: (-u.latency, -u.layers, u.activations))
    return MergeUnits(
        units=units,
        candidates=list(names),
        useless=useless,
        exact=exact,
        seconds=time.perf_counter() - start,
        dry_runs=dry.runs,
        dry_run=dry,
    )


def _why(journal, base_journal):
    """The dry run's reason a lone linearization merged nothing: what the
    merge pass refused that it did not meet without it."""
    known = {(e.kind, e.layers) for e in base_journal.skipped}
    for entry in journal.skipped:
        if entry.kind == "merge" and (entry.kind, entry.layers) not in known:
            return entry.detail
    return "no linear layer on both sides to merge with"


def _neighbours(graph, names):
    """`{name: {name, ...}}`: activations joined by a chain of linear
    layers (the run their joint linearization could make)."""
    readers = rewrite.readers(graph)
    by_node = {
        n.id: n.layer.name
        for n in graph.layer_nodes()
        if kinds.is_collapsible(n.layer) and n.layer.name in names
    }

    def linear(node, index):
        return (
            node.id not in by_node
            and kinds.is_linear_op(node.layer)
            and len(node.input_refs) == 1
        )

    links = {name: set() for name in names}
    for node_id, name in by_node.items():
        for reader in rewrite.reach(graph, [Ref(node_id)], linear, readers):
            other = by_node.get(reader.id)
            if other is not None and other != name:
                links[name].add(other)
                links[other].add(name)
    return links


def _connected_groups(names, neighbours, size):
    """Groups of `size` names, connected through `neighbours`, in order."""
    order = {n: i for i, n in enumerate(names)}
    frontier = {(n,) for n in names}
    for _ in range(size - 1):
        grown = set()
        for group in frontier:
            for member in group:
                for other in neighbours.get(member, ()):
                    if other not in group:
                        grown.add(tuple(sorted((*group, other), key=order.get)))
        frontier = grown
    return sorted(frontier, key=lambda g: [order[n] for n in g])
