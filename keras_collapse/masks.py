"""Holding chosen weights at exactly zero while a model trains.

One mechanism for every method that zeroes weights: TLC's OFF channels (a
BatchNormalization's gamma and beta, `linearize`) and NEPENTHE's pruned
kernel entries (`prune`). A `ZeroMask` constraint holds the masked entries
at zero after every optimizer step; `hold_at_zero` puts it on a layer's
weight, in the variable (what `fit` applies) and in the layer's
`<weight>_constraint` attribute (what `get_config` saves), so a model saved
mid-way keeps holding its zeros after `keras.saving.load_model`.

The masks are training state: `surgery` replaces them by the constraint the
weight had before (`strip_masks`), so its result loads with plain Keras.
"""

import base64
import dataclasses

import keras
import numpy as np

from keras_collapse.graph import keras_internals


@keras.saving.register_keras_serializable(package="keras_collapse")
class ZeroMask(keras.constraints.Constraint):
    """Holds the masked entries of a weight at exactly zero.

    Applied after every optimizer step like any constraint: `inner` (the
    constraint the weight had) first, then the masked entries are set to
    zero. The mask is saved compactly (its shape and its bits, packed).

    Args:
        mask: bool array-like of the weight's shape, True where the weight
            is held at zero.
        inner: the constraint the weight had before (an instance, a name or
            a config), applied first, or None. Defaults to `None`.

    Example:

    >>> mask = np.array([[True, False], [False, False]])
    >>> constraint = kc.masks.ZeroMask(mask)
    >>> keras.ops.convert_to_numpy(constraint(np.ones((2, 2)))).tolist()
    [[0.0, 1.0], [1.0, 1.0]]
    >>> layer = keras.layers.Dense(2, kernel_constraint=constraint)
    """

    def __init__(self, mask, inner=None):
        self.mask = np.asarray(mask, dtype=bool)
        self.inner = keras.constraints.get(inner)

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        w = keras.ops.convert_to_tensor(w)
        if tuple(w.shape) != self.mask.shape:
            raise ValueError(
                f"ZeroMask expects a weight of shape {self.mask.shape}. "
                f"Received: shape {tuple(w.shape)}"
            )
        return keras.ops.where(self.mask, keras.ops.zeros_like(w), w)

    def get_config(self):
        bits = np.packbits(self.mask.ravel())
        return {
            "shape": list(self.mask.shape),
            "bits": base64.b64encode(bits.tobytes()).decode("ascii"),
            "inner": keras.constraints.serialize(self.inner),
        }

    @classmethod
    def from_config(cls, config):
        if "mask" in config:  # files saved by ZeroChannels: a list of bools
            mask = config["mask"]
        else:
            shape = tuple(config["shape"])
            bits = np.frombuffer(base64.b64decode(config["bits"]), dtype=np.uint8)
            size = int(np.prod(shape, dtype=np.int64))
            mask = np.unpackbits(bits, count=size).astype(bool).reshape(shape)
        return cls(mask, keras.constraints.get(config.get("inner")))


@keras.saving.register_keras_serializable(package="keras_collapse")
class ZeroChannels(ZeroMask):
    """The name TLC's per-channel constraint had before `ZeroMask`; kept so
    that files whose config says "ZeroChannels" still load. New code uses
    `ZeroMask`."""


@dataclasses.dataclass
class HeldAtZero:
    """What `hold_at_zero` did to one weight; `undo()` takes the constraint
    back (the weight's values are the caller's to restore).

    Attributes:
        layer: the layer.
        weight: str, the weight's name ("kernel", "gamma", ...).
        mask: bool array, every entry now held at zero (earlier masks on the
            weight included).
        added: int, entries this call added to the mask.
    """

    layer: keras.layers.Layer
    weight: str
    mask: np.ndarray
    added: int
    _variable: object = dataclasses.field(repr=False)
    _attribute: str = dataclasses.field(repr=False)
    _previous: object = dataclasses.field(repr=False)
    _previous_attribute: object = dataclasses.field(repr=False)
    _added: np.ndarray = dataclasses.field(default=None, repr=False)
    _undone: bool = dataclasses.field(default=False, repr=False)

    def undo(self):
        """Takes this call's entries out of the weight's mask, in any order
        of undoing: entries held before it, or added by later calls, stay
        held; with nothing left held, the constraint is the one the mask
        wraps. Rebuild the train function afterwards
        (`linearize.rebuild_train_function`)."""
        if self._undone:
            return
        self._undone = True
        ours = self._added
        variable = self._variable
        current = variable.constraint
        if not isinstance(current, ZeroMask):  # replaced since: as before it
            variable.constraint = self._previous
            setattr(self.layer, self._attribute, self._previous_attribute)
            return
        variable.constraint = _without(current, ours)
        attribute = getattr(self.layer, self._attribute)
        if attribute is current:
            setattr(self.layer, self._attribute, variable.constraint)
        elif isinstance(attribute, ZeroMask):
            setattr(self.layer, self._attribute, _without(attribute, ours))
        else:
            setattr(self.layer, self._attribute, self._previous_attribute)


def hold_at_zero(layer, weight_name, mask):
    """Holds the masked entries of one of `layer`'s weights at zero.

    Sets them to zero now and puts a `ZeroMask` on the weight (in the
    variable and in the layer's config, so that saving keeps it). A mask
    already on the weight is kept: the new one is added to it. Inside `fit`,
    call `sync_training_state(model)` first (JAX) and rebuild the train
    function after (`linearize.rebuild_train_function`): the compiled step
    has the old constraint in it.

    Args:
        layer: a built `keras.layers.Layer`.
        weight_name: str, the weight's name: "kernel" (Conv, Dense,
            DepthwiseConv), "bias", "gamma", "beta", ...
        mask: bool array-like of the weight's shape, True where it is held
            at zero.

    Returns:
        `HeldAtZero`, with `undo()`.

    Raises:
        ValueError: if the layer has no such weight, no constraint argument
            for it in its config, or the mask's shape differs.

    Example:

    >>> layer = keras.layers.Dense(3)
    >>> layer.build((None, 2))
    >>> kernel = np.array([[1e-4, 1.0, 2.0], [3.0, -1e-5, 4.0]])
    >>> layer.set_weights([kernel, np.zeros(3)])
    >>> mask = np.abs(kernel) < 1e-3
    >>> held = kc.masks.hold_at_zero(layer, "kernel", mask)
    >>> keras.ops.convert_to_numpy(layer.kernel).tolist()  # zero now and in fit
    [[0.0, 1.0, 2.0], [3.0, 0.0, 4.0]]
    >>> held.undo()  # the constraint the kernel had before
    """
    variable = _variable(layer, weight_name)
    attribute = _constraint_attribute(layer, weight_name)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(variable.shape):
        raise ValueError(
            f"Expected a mask of shape {tuple(variable.shape)} for "
            f"'{layer.name}/{weight_name}'. Received: shape {mask.shape}"
        )
    previous = variable.constraint
    previous_attribute = getattr(layer, attribute)
    inner, held = previous, np.zeros(mask.shape, bool)
    if isinstance(previous, ZeroMask):
        inner, held = previous.inner, previous.mask
    combined = held | mask
    value = keras.ops.convert_to_numpy(variable)
    variable.assign(np.where(combined, 0, value).astype(value.dtype))
    constraint = ZeroMask(combined, inner)
    variable.constraint = constraint
    setattr(layer, attribute, constraint)
    return HeldAtZero(
        layer,
        weight_name,
        combined,
        int(combined.sum() - held.sum()),
        _variable=variable,
        _attribute=attribute,
        _previous=previous,
        _previous_attribute=previous_attribute,
        _added=mask & ~held,
    )


def _without(constraint, entries):
    """`constraint` (a `ZeroMask`) without `entries`: the mask that is
    left, or the constraint it wraps when nothing is left."""
    left = constraint.mask & ~entries
    return ZeroMask(left, constraint.inner) if left.any() else constraint.inner


def held_mask(layer, weight_name):
    """The bool mask of entries `hold_at_zero` holds at zero on a weight
    (all False when none)."""
    variable = _variable(layer, weight_name)
    if isinstance(variable.constraint, ZeroMask):
        return variable.constraint.mask.copy()
    return np.zeros(tuple(variable.shape), bool)


def strip_masks(model):
    """Replaces every `ZeroMask` on `model`'s layers (config attributes and
    variables) by the constraint it wraps; modifies `model` in place.

    Returns:
        int, the number of masks removed.
    """
    removed = 0
    for layer in keras_internals.sublayers(model):
        for attribute, value in list(vars(layer).items()):
            if attribute.endswith("_constraint") and isinstance(value, ZeroMask):
                setattr(layer, attribute, _unwrap(value))
                removed += 1
        for variable in layer.weights:
            if isinstance(variable.constraint, ZeroMask):
                variable.constraint = _unwrap(variable.constraint)
    return removed


def _unwrap(constraint):
    while isinstance(constraint, ZeroMask):
        constraint = constraint.inner
    return constraint


def _variable(layer, weight_name):
    if not isinstance(layer, keras.layers.Layer) or not layer.built:
        raise ValueError(
            f"Expected a built Keras layer. Received: {layer!r}"
            + ("" if not isinstance(layer, keras.layers.Layer) else " (not built)")
        )
    found = [v for v in layer.weights if v.name == weight_name]
    if len(found) != 1:
        raise ValueError(
            f"Expected the name of one weight of layer '{layer.name}' (one of "
            f"{sorted({v.name for v in layer.weights})}). Received: "
            f"weight_name={weight_name!r}"
        )
    return found[0]


def _constraint_attribute(layer, weight_name):
    """The attribute (and `get_config` key) holding the weight's constraint:
    `<weight>_constraint`, except a depthwise kernel's
    `depthwise_constraint`."""
    attribute = f"{weight_name}_constraint"
    depthwise = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    if isinstance(layer, depthwise) and weight_name == "kernel":
        attribute = "depthwise_constraint"
    if not hasattr(layer, attribute) or attribute not in layer.get_config():
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has no "
            f"`{attribute}` argument in its config, so a mask on its "
            f"'{weight_name}' would not be saved with the model."
        )
    return attribute
