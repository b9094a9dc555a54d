"""Linearizing collapsible activations the TLC way: ON channels pass through,
OFF channels are zeroed at their BatchNormalization.

The activation is locked to the identity (`CollapsibleActivation.lock_linear`);
each channel TLC forces OFF gets `gamma = beta = 0` in the BatchNormalization
that feeds it, so it is exactly zero in training and at inference alike, and
`surgery` cuts it from the layer that makes it and the layers that read it.
A `ZeroMask` constraint (`masks.py`, the mechanism pruning uses too) keeps
those weights at zero while training goes on, and is saved with the model.
"""

import dataclasses

import keras
import numpy as np

from keras_collapse.collapsible import layer_list
from keras_collapse.collapsible import sync_training_state
from keras_collapse.masks import ZeroChannels  # noqa: F401  (the old home)
from keras_collapse.masks import hold_at_zero
from keras_collapse.scores.batchnorm import layer_states
from keras_collapse.scores.pairs import find_pairs


@dataclasses.dataclass
class Linearized:
    """What `linearize` did to one activation; `undo()` takes it back.

    Attributes:
        name: str, the activation layer.
        batchnorm: str or None, the BatchNormalization whose channels were
            zeroed.
        on: int, channels that pass through.
        off: int, channels zeroed.
        note: str or None, why no channel was zeroed, where that applies.
    """

    name: str
    batchnorm: str | None
    on: int
    off: int
    note: str | None = None
    _restore: list = dataclasses.field(default_factory=list, repr=False)
    _held: list = dataclasses.field(default_factory=list, repr=False)

    def undo(self):
        """Restores the weights and constraints this linearization changed.
        Inside `fit`, call `sync_training_state(model)` first (JAX)."""
        for held in reversed(self._held):
            held.undo()
        for variable, value, constraint in reversed(self._restore):
            variable.assign(value)
            variable.constraint = constraint
        self._restore, self._held = [], []


def linearize(model, layers, zero_off=True):
    """Linearizes collapsible activations the TLC way; safe inside `fit`.

    For each layer: channels its BatchNormalization marks OFF
    (`analyze_batchnorm`) are zeroed there (`gamma = beta = 0`, held at zero
    by a constraint while training continues), and the activation is locked
    to the identity, so the ON channels pass through. A layer without a
    BatchNormalization right before it (after a residual `Add`, say) is only
    locked, as is one whose BN has `scale=False` (no gamma to zero) or
    non-finite weights. `surgery` then merges the linear layers around it and
    cuts the zeroed channels, computing exactly what this model computes.

    Args:
        model: the `keras.Model` (training or not).
        layers: a collapsible activation layer or name, or a list of them.
        zero_off: bool, whether to zero the OFF channels; False only locks
            the activations. Defaults to `True`.

    Returns:
        list of `Linearized`, one per layer, in the order given.

    Raises:
        ValueError: if a layer is not a collapsible activation of `model`.

    Example:

    >>> inputs = keras.Input((4,))
    >>> bn = keras.layers.BatchNormalization(name="bn")
    >>> h = kc.CollapsibleActivation("relu", name="act")(
    ...     bn(keras.layers.Dense(3)(inputs)))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(h))
    >>> _ = bn.beta.assign([-9.0, 0.0, 9.0])  # channel 0 surely OFF, 2 ON
    >>> kc.linearize(model, "act")  # the uncertain channel 1 passes too
    [Linearized(name='act', batchnorm='bn', on=2, off=1, ...)]
    >>> model.get_layer("act").is_locked
    True
    """
    done = linearize_pairs(model, select_pairs(model, layers), zero_off=zero_off)
    if any(d.off for d in done):
        rebuild_train_function(model)
    return done


def select_pairs(model, layers, pairs=None):
    """The `Pair`s of `layers` (layers or names) among `model`'s activations."""
    pairs = find_pairs(model) if pairs is None else pairs
    by_name = {p.activation.name: p for p in pairs}
    chosen = []
    for item in layer_list(layers):
        name = item if isinstance(item, str) else getattr(item, "name", None)
        pair = by_name.get(name)
        if pair is None or (not isinstance(item, str) and pair.activation is not item):
            raise ValueError(
                f"Expected a collapsible activation of model '{model.name}' (one "
                f"of {sorted(by_name)}). Received: {item!r}"
            )
        chosen.append(pair)
    return chosen


def linearize_pairs(model, pairs, offs=None, zero_off=True, constrain=True):
    """`linearize` on `Pair`s. `offs`: per pair, the channels to zero (a
    bool array along the BN's axis) or None for TLC's BatchNorm-based choice.
    `constrain=False` leaves zeroed weights free to train (for a trial that
    is undone before the next step); the caller rebuilds the train function
    when constraints were added."""
    sync_training_state(model)
    offs = [None] * len(pairs) if offs is None else offs
    return [
        _linearize(pair, off, zero_off, constrain) for pair, off in zip(pairs, offs)
    ]


def rebuild_train_function(model):
    """Retraces the train step so that new constraints take effect (the JAX
    and TensorFlow steps are compiled); also correct in the middle of `fit`."""
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)


def _linearize(pair, off, zero_off, constrain):
    layer, bn = pair.activation, pair.batchnorm
    record = Linearized(layer.name, None, on=0, off=0, note=pair.reason)
    if zero_off and bn is not None:
        states = layer_states(pair, confidence=0.95)
        if states.reason:
            record.note = states.reason
        elif not bn.scale:
            record.note = "BatchNormalization has scale=False: no gamma to zero"
        else:
            off = states.off if off is None else np.asarray(off, bool)
            record.batchnorm, record.off = bn.name, int(off.sum())
            record.on = int(len(off) - record.off)
            for name in ["gamma"] + (["beta"] if bn.center else []):
                _zero(bn, name, off, constrain, record)
    for variable in (layer.alpha, layer.linear_lock):
        record._restore.append(
            (variable, keras.ops.convert_to_numpy(variable), variable.constraint)
        )
    layer.lock_linear()
    return record


def _zero(bn, name, off, constrain, record):
    variable = getattr(bn, name)
    value = keras.ops.convert_to_numpy(variable)
    record._restore.append((variable, value, variable.constraint))
    variable.assign(np.where(off, 0.0, value).astype(value.dtype))
    if constrain and off.any():
        record._held.append(hold_at_zero(bn, name, off))
