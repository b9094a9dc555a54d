"""Finding the collapsible activations of a model, and locking them linear."""

import importlib

import keras

from keras_collapse.layers import CollapsibleActivation

_LOCKING = "keras_collapse.actions.locking"


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


def __getattr__(name):
    # Earlier releases defined `lock_near_linear` here; it moved above the
    # surgery (`keras_collapse.actions.locking`), which it consults. The old
    # path stays for users' code, resolved by name like a moved module.
    if name == "lock_near_linear":
        return getattr(importlib.import_module(_LOCKING), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
