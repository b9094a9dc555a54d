"""Locking near-linear slopes: LayerCollapse's collapse condition, and with
`objective="depth"`/`"latency"` only where the surgery would merge."""

import warnings

import numpy as np

from keras_collapse.checks import check_bool
from keras_collapse.checks import check_number
from keras_collapse.collapsible import collapsible_layers
from keras_collapse.collapsible import sync_training_state
from keras_collapse.surgery.units import check_objective
from keras_collapse.surgery.units import merge_units


def lock_near_linear(
    model, tolerance=0.05, *, objective="activations", exact=True, cost_model=None
):
    """Locks every collapsible activation whose alpha is within `tolerance`
    of 1 (LayerCollapse's collapse condition), snapping it to exactly 1.

    Args:
        model: a `keras.Model`.
        tolerance: float in [0, 1), the largest distance of a slope from the
            identity, `max |alpha - 1|` over a layer's alphas, that counts as
            linear. Not the callbacks' `tolerance` (an accuracy drop).
            Defaults to `0.05`.
        objective: "activations" locks every near-linear one; "depth" /
            "latency" only those in a merge unit of near-linear activations
            that buys something (`keras_collapse.merge_units`): the others
            stay free, since locking them would save nothing. Defaults to
            `"activations"`.
        exact: bool, the surgery's `exact`, for the merge units. Defaults to
            `True`.
        cost_model: the surgery's cost model, for the merge units. Defaults
            to `None` (`MacCostModel()`).

    Returns:
        list of the layers that were locked (already-locked ones excluded).
    """
    check_objective(objective)
    check_number(
        "tolerance", tolerance, 0, 1, high_open=True, what="the largest |alpha - 1|"
    )
    check_bool("exact", exact)
    sync_training_state(model)
    chosen = [
        layer
        for layer in collapsible_layers(model)
        if not layer.is_locked
        and float(np.max(np.abs(layer.alpha_numpy() - 1.0))) <= tolerance
    ]
    # A slope already at exactly 1 is linear: locking it costs nothing, and
    # the merge units count it as linear already (not a candidate).
    nonlinear = [layer for layer in chosen if not layer.is_linear]
    if objective != "activations" and nonlinear:
        units = merge_units(
            model,
            candidates=[layer.name for layer in nonlinear],
            exact=exact,
            cost_model=cost_model,
        ).for_objective(objective)
        members = {name for unit in units for name in unit.activations}
        chosen = [layer for layer in chosen if layer.is_linear or layer.name in members]
    for layer in chosen:
        layer.lock_linear()
    if not chosen:
        _say_nearest(model, tolerance, objective)
    return chosen


def _say_nearest(model, tolerance, objective):
    """Warns how close the nearest slopes came when nothing was locked."""
    free = [layer for layer in collapsible_layers(model) if not layer.is_locked]
    if not free:
        return
    distance = {
        layer.name: float(np.max(np.abs(layer.alpha_numpy() - 1.0))) for layer in free
    }
    nearest = sorted(distance.items(), key=lambda item: item[1])[:3]
    shown = ", ".join(f"{name} at |alpha - 1| = {d:.3g}" for name, d in nearest)
    scope = "" if objective == "activations" else f" in a merge unit ({objective})"
    warnings.warn(
        f"lock_near_linear locked nothing{scope}: no slope of model "
        f"'{model.name}' came within tolerance={tolerance:g} of 1. The nearest: "
        f"{shown}. Train longer, pull harder (`LinearityRegularizer(factor)`), "
        "or raise `tolerance`.",
        stacklevel=2,
    )
