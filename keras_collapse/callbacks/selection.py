"""What one decision of the greedy engine takes: its pace, and the merge
units that buy something under the objective."""

import math

import numpy as np

from keras_collapse.checks import is_int
from keras_collapse.collapsible import sync_training_state
from keras_collapse.surgery.units import merge_units


def check_pace(per_decision):
    """Raises a ValueError unless `per_decision` is an int >= 1 or a
    fraction in (0, 1)."""
    if is_int(per_decision):
        if per_decision >= 1:
            return
    elif isinstance(per_decision, (float, np.floating)) and 0 < per_decision < 1:
        return
    raise ValueError(
        "`per_decision` must be an int >= 1 (candidates per decision) or a "
        "float in (0, 1) (that fraction of the candidates left, halved after "
        f"each rollback). Received: per_decision={per_decision!r}"
    )


class Pace:
    """How many candidates (or merge units) one decision takes: an int, or
    a fraction of those left (at least one) that halves after a rollback."""

    def __init__(self, per_decision):
        check_pace(per_decision)
        self.value = per_decision

    @property
    def fractional(self):
        return not is_int(self.value)

    def count(self, available):
        if not self.fractional:
            return self.value
        return max(1, math.ceil(self.value * available))

    def rolled_back(self):
        if self.fractional:
            self.value /= 2


def units_of(model, pool, *, exact, cost_model, trainer=None):
    """The `MergeUnits` among the `pool` activations, as the model is."""
    sync_training_state(trainer if trainer is not None else model)
    return merge_units(
        model,
        candidates=[p.activation.name for p in pool],
        exact=exact,
        cost_model=cost_model,
    )


def pick_units(ranked, units, found, objective, count, room, extra):
    """`(scores, units taken)`: the scores of the members of the `count`
    units with the lowest combined score per unit of gain (ties: the larger
    gain), plus the units whose members are all in `extra` (names); each
    unit priced with the OFF channels its members' scores zero, and dropped
    if it then buys nothing. No scores when no unit is fully scored or fits
    in `room`."""
    by_name = {s.pair.activation.name: s for s in ranked}
    units = [u for u in units if all(n in by_name for n in u.activations)]
    units = [p for u in units if (p := with_off(u, by_name, found, objective))]

    def key(unit):
        total = sum(
            float(np.nan_to_num(by_name[n].value, nan=np.inf)) for n in unit.activations
        )
        gain = unit.gain(objective)
        # A negative score (the loss falls) is better with more gain.
        return (total / gain if total >= 0 else total * gain, -gain)

    names, taken = [], 0
    for unit in sorted(units, key=key):
        members = set(unit.activations)
        if len(names) + len(members) > room or members & set(names):
            continue
        if taken < count or members <= extra:
            names += unit.activations
            taken += 1
    return [by_name[n] for n in names], taken


def with_off(unit, by_name, found, objective):
    """`unit` priced with the OFF channels its members' scores zero (a cut
    can leave nothing worth merging), or None if it then buys nothing."""
    off = {n: by_name[n].off for n in unit.activations}
    if not any(mask is not None and np.any(mask) for mask in off.values()):
        return unit
    priced = found.evaluate(unit.activations, off)
    return priced if priced.buys(objective) else None
