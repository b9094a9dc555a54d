"""Finding the collapsible activations of a model, and locking them linear."""

import warnings

import keras
import numpy as np

from keras_collapse.layers import CollapsibleActivation
from keras_collapse.units import check_objective
from keras_collapse.units import merge_units


def collapsible_layers(model):
    """Returns the collapsible activation layers of a model, in graph order.

    Nested models are searched recursively; a layer used at several places
    (shared) is listed once.

    Args:
        model: a `keras.Model` (Functional, Sequential, or subclassed).

    Returns:
        list of `CollapsibleActivation` (including `CollapsiblePReLU`), in
        topological order for Functional and Sequential models.

    Raises:
        ValueError: if `model` is not a `keras.Model`.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected a keras.Model. Received: {model!r} of type "
            f"{type(model).__name__}"
        )
    return [
        layer
        for layer in model_layers(model)
        if isinstance(layer, CollapsibleActivation)
    ]


def model_layers(model):
    """Every layer of `model` in graph order, nested models searched (and
    listed), a shared layer once."""
    found, seen = [], set()

    def visit(container):
        for layer in getattr(container, "layers", ()):
            if id(layer) not in seen:
                seen.add(id(layer))
                found.append(layer)
                if isinstance(layer, keras.Model):
                    visit(layer)

    visit(model)
    return found


def sync_training_state(model):
    """Brings the trainer's copy of the variables back into `model`.

    JAX's `fit` keeps its own copy of every variable during an epoch and
    writes it back at the epoch's end, overwriting changes made in between.
    After this call, a change to a variable is picked up by the next step.
    A no-op on TensorFlow and PyTorch, and outside `fit`.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def layer_list(layers, what="layers"):
    """`layers` (a layer, a name, or a list / tuple of them) as a list.

    Raises:
        ValueError: for anything else, e.g. an int (a count is not a choice:
            rank the layers with `analyze_batchnorm` or `activation_statistics`
            and pass the chosen names).
    """
    if isinstance(layers, (str, keras.layers.Layer)):
        return [layers]
    if isinstance(layers, (list, tuple)) and all(
        isinstance(item, (str, keras.layers.Layer)) for item in layers
    ):
        return list(layers)
    raise ValueError(
        f"`{what}` must be a collapsible activation layer, its name, or a list "
        "of them; for TLC's best three: `[s.name for s in "
        "analyze_batchnorm(model).candidates()[:3]]`. Received: "
        f"{what}={layers!r} of type {type(layers).__name__}"
    )


def lock_linear(model, layers):
    """Locks collapsible activations of `model` to the identity; safe in `fit`.

    Call it from any callback hook: the change takes effect at the next
    training step and persists on all backends.

    Args:
        model: the `keras.Model` that is (or will be) training.
        layers: a layer, a layer name, or a list of them; each must be a
            collapsible activation of `model`.

    Returns:
        list of the layers that were locked.

    Raises:
        ValueError: if a layer is not a collapsible activation of `model`.
    """
    candidates = collapsible_layers(model)
    by_name = {layer.name: layer for layer in candidates}
    chosen = []
    for item in layer_list(layers):
        layer = by_name.get(item) if isinstance(item, str) else item
        if layer is None or all(layer is not c for c in candidates):
            raise ValueError(
                f"Expected a collapsible activation of model '{model.name}' "
                f"(one of {sorted(by_name)}). Received: {item!r}"
            )
        chosen.append(layer)
    sync_training_state(model)
    for layer in chosen:
        layer.lock_linear()
    return chosen


def lock_near_linear(
    model, tolerance=0.05, *, objective="activations", exact=True, cost_model=None
):
    """Locks every collapsible activation whose alpha is within `tolerance`
    of 1 (LayerCollapse's collapse condition), snapping it to exactly 1.

    Args:
        model: a `keras.Model`.
        tolerance: float, the largest `|alpha - 1|` (over all of a layer's
            alphas) that counts as linear. Defaults to `0.05`.
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
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float))
        or not (0 <= tolerance < 1)
    ):
        raise ValueError(
            f"`tolerance` must be a number in [0, 1). Received: tolerance={tolerance!r}"
        )
    sync_training_state(model)
    chosen = [
        layer
        for layer in collapsible_layers(model)
        if not layer.is_locked
        and float(np.max(np.abs(layer.alpha_numpy() - 1.0))) <= tolerance
    ]
    if objective != "activations" and chosen:
        units = merge_units(
            model,
            candidates=[layer.name for layer in chosen],
            exact=exact,
            cost_model=cost_model,
        ).for_objective(objective)
        members = {name for unit in units for name in unit.activations}
        chosen = [layer for layer in chosen if layer.name in members]
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
