"""The joint method's budget: what the target asks, what each gate buys,
which set the gates choose, and the multiplier that pulls them there."""

import dataclasses
import math

import numpy as np

from keras_collapse.checks import check_fraction
from keras_collapse.surgery.units import check_objective
from keras_collapse.surgery.units import merge_units


def check_target(target):
    """`target` as a float in (0, 1]; a ValueError otherwise."""
    return check_fraction(
        "target",
        target,
        one=True,
        what="the fraction to remove (of the candidate activations, of the "
        "depth, or of the latency)",
    )


@dataclasses.dataclass
class Budget:
    """A target over candidate activations.

    With objective "activations" every candidate counts 1 and `needed` is
    `ceil(target * n)`; with "depth" / "latency" the candidates are the
    members of merge units, each weighted by its share of what its units
    save, `needed` is `target` times the BN-folded model's real depth (or
    latency under the cost model), and a set is priced by the surgery's own
    dry runs (`found.evaluate`).

    Attributes:
        objective: str.
        target: float in (0, 1].
        names: list of the candidate activation names, in graph order.
        weights: array, per candidate, what it buys (mean 1).
        needed: what the chosen set must save (a count, depth or latency).
        total: the whole it is a fraction of (candidates, depth, latency).
        units: list of `MergeUnit`, or None for "activations".
        found: the `MergeUnits` that price sets, or None.
    """

    objective: str
    target: float
    names: list
    weights: np.ndarray
    needed: float
    total: float
    units: list | None = None
    found: object = None

    @classmethod
    def plan(cls, model, names, objective, target, exact=True, cost_model=None):
        """The budget of `target` over activations `names` of `model`.

        Raises:
            ValueError: no merge unit buys anything under the objective, or
                the target is more than every unit together saves (the
                message says the most that can be reached).
        """
        check_objective(objective)
        target = check_target(target)
        if objective == "activations":
            needed = math.ceil(target * len(names) - 1e-9)
            return cls(
                objective, target, list(names), np.ones(len(names)), needed, len(names)
            )
        found = merge_units(
            model, candidates=list(names), exact=exact, cost_model=cost_model
        )
        units = [u for u in found.for_objective(objective) if _gain(u, objective) > 0]
        if not units:
            raise ValueError(f"In model '{model.name}', {found.why_none(objective)}")
        total = float(found.total[objective])
        members = [n for n in names if any(n in u.activations for u in units)]
        most = _gain(found.evaluate(members), objective)
        needed = target * total
        if most + 1e-9 < needed:
            raise ValueError(
                f"A {objective} target of {target:.0%} cannot be reached in model "
                f"'{model.name}': linearizing every merge unit ({len(units)}) "
                f"saves {most:g} of {total:g} ({most / total:.1%}). Ask for "
                f"target <= {math.floor(most / total * 1000) / 1000:g}."
            )
        index = {n: i for i, n in enumerate(members)}
        weights = np.zeros(len(members))
        for unit in units:
            for name in unit.activations:
                weights[index[name]] += _gain(unit, objective) / len(unit.activations)
        weights /= weights.mean()
        return cls(objective, target, members, weights, needed, total, units, found)

    def soft(self, gates):
        """What the gates buy, each counted by how open it is."""
        return float(np.dot(self.weights, gates))

    def select(self, gates, ties=None):
        """The set the gates choose now: the `needed` largest gates
        ("activations"), or the merge units by their mean gate until what
        they save (unit by unit) meets the target. `ties`: per candidate,
        a rank in [0, 1] (lower wins)."""
        key = np.asarray(gates, float) - 1e-6 * (0.0 if ties is None else ties)
        if self.units is None:
            order = np.argsort(-key, kind="stable")[: int(self.needed)]
            return [self.names[i] for i in sorted(order)]
        chosen, gain = set(), 0.0
        for unit in self._by_gate(key):
            if set(unit.activations) <= chosen:
                continue
            chosen |= set(unit.activations)
            gain += _gain(unit, self.objective)
            if gain >= self.needed:
                break
        return [n for n in self.names if n in chosen]

    def priced(self, chosen, gates):
        """`chosen` extended, unit by unit in gate order, until the surgery's
        dry run of the whole set saves what the target asks."""
        if self.units is None:
            return list(chosen)
        chosen = set(chosen)
        rest = [u for u in self._by_gate(gates) if not set(u.activations) <= chosen]
        while self.saving(chosen) + 1e-9 < self.needed and rest:
            chosen |= set(rest.pop(0).activations)
        return [n for n in self.names if n in chosen]

    def saving(self, chosen):
        """What linearizing `chosen` saves: a count, or the dry run's depth /
        latency."""
        if self.units is None:
            return float(len(chosen))
        ordered = [n for n in self.names if n in set(chosen)]
        return _gain(self.found.evaluate(ordered), self.objective)

    def _by_gate(self, gates):
        index = {n: i for i, n in enumerate(self.names)}
        return sorted(
            self.units,
            key=lambda u: -float(np.mean([gates[index[n]] for n in u.activations])),
        )


def _gain(unit, objective):
    return float(unit.depth if objective == "depth" else unit.latency)


class Multiplier:
    """Dual ascent on "the gates buy what the target asks": the multiplier
    grows by `rate` times the relative deficit each step and shrinks past
    the target, so the pull it sets lands the gates on the budget with no
    weight to tune.

    Args:
        rate: float, the step per unit of relative deficit.
        value: float, the start. Defaults to `0.0`.
    """

    def __init__(self, rate, value=0.0):
        self.rate = float(rate)
        self.value = float(value)

    def update(self, have, need):
        self.value += self.rate * (need - have) / need
        return self.value
