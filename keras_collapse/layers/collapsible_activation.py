"""An activation that a single slope `alpha` blends into the identity."""

import inspect

import keras
import numpy as np
from keras import ops

from keras_collapse.checks import check_bool
from keras_collapse.checks import check_number
from keras_collapse.regularizers import LinearityRegularizer

# Activations that are not elementwise (or already linear) cannot be blended
# into the identity channel by channel.
_NOT_COLLAPSIBLE = ("softmax", "log_softmax", "glu", "sparsemax", "linear")


def resolve_activation(activation, activation_kwargs=None):
    """Returns `(name, function, kwargs)` for an elementwise Keras activation.

    Args:
        activation: str, the name of a `keras.activations` function, or one
            such function.
        activation_kwargs: dict or None, extra keyword arguments of that
            function (e.g. `{"max_value": 6.0}` for `relu`).

    Raises:
        ValueError: if the activation is unknown, not elementwise, or does not
            accept the keyword arguments.
    """
    try:
        fn = keras.activations.get(activation)
    except (ValueError, TypeError):
        fn = None
    name = keras.activations.serialize(fn) if fn is not None else None
    if not isinstance(name, str):
        raise ValueError(
            "`activation` must name an elementwise `keras.activations` function "
            f"such as 'relu', 'relu6', 'gelu', 'silu' or 'leaky_relu'. "
            f"Received: activation={activation!r}"
        )
    if name in _NOT_COLLAPSIBLE:
        raise ValueError(
            f"Activation '{name}' cannot be collapsed: it is linear already or "
            "not elementwise. Expected an elementwise nonlinearity such as "
            f"'relu', 'gelu' or 'silu'. Received: activation={activation!r}"
        )
    kwargs = dict(activation_kwargs or {})
    try:
        inspect.signature(fn).bind(None, **kwargs)
    except TypeError as e:
        raise ValueError(
            f"Activation '{name}' does not accept the keyword arguments "
            f"{kwargs}: {e}. Received: activation_kwargs={activation_kwargs!r}"
        ) from None
    return name, fn, kwargs


def check_trainable_alpha(value):
    """Returns `value` if it is True, False or None; raises ValueError otherwise."""
    return check_bool(
        "trainable_alpha",
        value,
        allow_none=True,
        what="None: trained when a regularizer pulls it",
    )


# The step a regularized slope takes per optimizer step, over the model's
# learning rate: at Adam 3e-4 a slope stored unscaled moves at most 3e-4 a
# step, so the LayerCollapse pull would need thousands of steps to reach 1.
LAYERCOLLAPSE_ALPHA_SCALE = 32.0


def resolve_alpha_scale(alpha_scale, alpha_regularizer=None):
    """`alpha_scale` as the power of two it is rounded to (None: 1, or
    `LAYERCOLLAPSE_ALPHA_SCALE` when a regularizer pulls the slope).

    A power of two keeps `alpha = scale * stored` exact in floating point, so
    a slope projected to exactly 1 is exactly 1.

    Raises:
        ValueError: unless `alpha_scale` is None or a finite number > 0.
    """
    if alpha_scale is None:
        return LAYERCOLLAPSE_ALPHA_SCALE if alpha_regularizer is not None else 1.0
    alpha_scale = check_number(
        "alpha_scale",
        alpha_scale,
        low=0,
        low_open=True,
        allow_none=True,
        what="how many times faster than the model's weights the optimizer "
        "moves the slope",
    )
    return float(2.0 ** round(np.log2(alpha_scale)))


def check_alpha_range(alpha_range):
    """`alpha_range` as a `(low, high)` tuple of floats, or None.

    Raises:
        ValueError: unless it is None or two finite numbers with low <= high.
    """
    if alpha_range is None:
        return None
    try:
        low, high = (float(v) for v in alpha_range)
        ok = isinstance(alpha_range, (list, tuple)) and not any(
            isinstance(v, bool) for v in alpha_range
        )
    except (TypeError, ValueError):
        ok = False
    if not ok or not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ValueError(
            "`alpha_range` must be None or (low, high), two finite numbers with "
            f"low <= high. Received: alpha_range={alpha_range!r}"
        )
    return (low, high)


def _resolve_shared_axes(shared_axes):
    if shared_axes is None or shared_axes == "all":
        return shared_axes
    axes = [shared_axes] if isinstance(shared_axes, int) else shared_axes
    if not isinstance(axes, (list, tuple)) or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in axes
    ):
        raise ValueError(
            "`shared_axes` must be 'all', None, an int or a list of ints. "
            f"Received: shared_axes={shared_axes!r}"
        )
    return list(axes)


@keras.saving.register_keras_serializable(package="keras_collapse")
class CollapsibleActivation(keras.layers.Layer):
    """An activation blended toward the identity by a slope `alpha`.

    `y = alpha * x + (1 - alpha) * act(x)`, computed as
    `act(x) + alpha * (x - act(x))`: `alpha = 0` is exactly the original
    activation, `alpha = 1` is the identity. For `act = relu` this is the
    PReLU `max(0, x) + alpha * min(0, x)` exactly, at every alpha.

    Once linear, the layers on both sides of it can be merged into one by
    `keras_collapse.surgery`. A layer can be *locked* linear (`lock_linear()`):
    it then computes exactly `y = x` whatever `alpha` becomes while the rest of
    the model keeps training. The lock is a non-trainable weight, so it is
    saved with the model.

    Args:
        activation: str, the elementwise `keras.activations` function to
            blend ('relu', 'relu6', 'gelu', 'silu', 'leaky_relu', ...).
            Defaults to `"relu"`.
        activation_kwargs: dict, keyword arguments of that function, e.g.
            `{"max_value": 6.0}` or `{"negative_slope": 0.1}`. Defaults to
            `None`.
        alpha_initializer: initializer of `alpha`. Defaults to `"zeros"`
            (the original activation).
        alpha_regularizer: regularizer of `alpha`: `"linearity"` attaches
            `LinearityRegularizer()` (factor 0.2), the LayerCollapse pull
            toward the identity, or pass any regularizer (it makes `alpha`
            trainable, see `trainable_alpha`). None (the default) pulls
            nowhere, so a model that never collapses anything is not hurt (a
            pull moves every slope, and BatchNormalization's moving
            statistics lag behind it). Defaults to `None`.
        alpha_constraint: constraint of `alpha`. Defaults to `None`.
        trainable_alpha: bool or None, whether the optimizer trains `alpha`.
            None (the default) trains it when a regularizer pulls it
            (LayerCollapse) and keeps it where it is otherwise: the
            callbacks (TLC, EASIER, NEPENTHE) and `lock_linear` set it
            themselves, and a frozen slope at 0 costs in training what the
            activation alone costs. True trains it as a PReLU's slope.
            Defaults to `None`.
        shared_axes: axes along which `alpha` is shared. `"all"` gives one
            scalar per layer (as in LayerCollapse, and the regularizer then
            weighs every layer alike); `None` one alpha per element (Keras'
            `PReLU` default); `[1, 2]` one per channel of an image. Defaults
            to `"all"`.
        alpha_scale: float > 0, the slope's own learning-rate scale: the
            variable stores `alpha / alpha_scale`, so an optimizer step moves
            `alpha` `alpha_scale` times as far as it moves a weight (with
            Adam, up to `alpha_scale * learning_rate` a step). Rounded to a
            power of two (exact arithmetic). None: 1, or 32 when a
            regularizer pulls the slope, so that the LayerCollapse pull
            reaches the identity within a few hundred steps at Adam 3e-4.
            Regularizers and constraints see `alpha` itself. Defaults to
            `None`.
        alpha_range: `(low, high)`, None (unbounded) or "auto": after every
            optimizer step `alpha` is clipped to this range (a projection:
            exactly `high` is reachable, and stays reachable for the
            gradient). "auto": `(0, 1)` when a regularizer pulls the slope (a
            blend between the activation and the identity), else None.
            `(0, 0)` pins a trainable slope at the activation. Defaults to
            `"auto"`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Example:

    >>> layer = kc.CollapsibleActivation("relu")
    >>> x = keras.ops.convert_to_tensor([-1.0, 2.0])
    >>> keras.ops.convert_to_numpy(layer(x)).tolist()  # alpha = 0: relu(x)
    [0.0, 2.0]
    >>> layer.lock_linear()  # alpha = 1 for good: exactly x
    >>> keras.ops.convert_to_numpy(layer(x)).tolist()
    [-1.0, 2.0]

    Reference:
        LayerCollapse, arXiv 2311.17943.
    """

    def __init__(
        self,
        activation="relu",
        activation_kwargs=None,
        alpha_initializer="zeros",
        alpha_regularizer=None,
        alpha_constraint=None,
        trainable_alpha=None,
        shared_axes="all",
        alpha_scale=None,
        alpha_range="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.activation, self._activation_fn, self.activation_kwargs = (
            resolve_activation(activation, activation_kwargs)
        )
        self.alpha_initializer = keras.initializers.get(alpha_initializer)
        if alpha_regularizer == "linearity":
            alpha_regularizer = LinearityRegularizer()
        self.alpha_regularizer = keras.regularizers.get(alpha_regularizer)
        self.alpha_constraint = keras.constraints.get(alpha_constraint)
        self.trainable_alpha = check_trainable_alpha(trainable_alpha)
        self.shared_axes = _resolve_shared_axes(shared_axes)
        self.alpha_scale = resolve_alpha_scale(alpha_scale, self.alpha_regularizer)
        if isinstance(alpha_range, str) and alpha_range == "auto":
            alpha_range = (0.0, 1.0) if self.alpha_regularizer is not None else None
        self.alpha_range = check_alpha_range(alpha_range)

    @classmethod
    def from_config(cls, config):
        # Files saved before `alpha_scale` / `alpha_range` stored alpha itself
        # and bounded nothing, whatever their regularizer.
        config = dict(config)
        config.setdefault("alpha_scale", 1.0)
        config.setdefault("alpha_range", None)
        return cls(**config)

    def build(self, input_shape):
        rank = len(input_shape)
        if self.shared_axes == "all":
            alpha_shape = ()
        else:
            alpha_shape = list(input_shape[1:])
            for axis in self.shared_axes or ():
                if not 1 <= axis < rank:
                    raise ValueError(
                        f"`shared_axes` must be axes of the input between 1 and "
                        f"{rank - 1} (the batch axis 0 is always shared). "
                        f"Received: shared_axes={self.shared_axes} for an input "
                        f"of shape {tuple(input_shape)}"
                    )
                alpha_shape[axis - 1] = 1
            if any(d is None for d in alpha_shape):
                raise ValueError(
                    "`alpha` needs a known size on every axis it is not shared "
                    f"along. Received an input of shape {tuple(input_shape)} "
                    f"with shared_axes={self.shared_axes}; share the unknown "
                    "axes (e.g. shared_axes=[1, 2] for images of any size)."
                )
        self.alpha = self.add_weight(
            shape=tuple(alpha_shape),
            name="alpha",
            initializer=self._stored_initializer,
            regularizer=(
                self._regularize_alpha if self.alpha_regularizer is not None else None
            ),
            constraint=self._constraint_or_none(),
            trainable=(
                self.alpha_regularizer is not None
                if self.trainable_alpha is None
                else self.trainable_alpha
            ),
        )
        # 1.0 when locked linear. A variable, not a Python flag, so that a
        # change made during `fit` reaches the compiled train step.
        self.linear_lock = self.add_weight(
            shape=(),
            name="linear_lock",
            initializer="zeros",
            trainable=False,
        )

    # The variable holds alpha / alpha_scale; these see alpha itself.
    def _stored_initializer(self, shape, dtype=None):
        value = self.alpha_initializer(shape, dtype=dtype)
        return value if self.alpha_scale == 1.0 else value / self.alpha_scale

    def _regularize_alpha(self, stored):
        return self.alpha_regularizer(stored * self.alpha_scale)

    def _constrain_alpha(self, stored):
        alpha = stored * self.alpha_scale
        if self.alpha_constraint is not None:
            alpha = self.alpha_constraint(alpha)
        if self.alpha_range is not None:
            alpha = ops.clip(alpha, *self.alpha_range)
        return alpha / self.alpha_scale

    def _constraint_or_none(self):
        if self.alpha_constraint is None and self.alpha_range is None:
            return None
        return self._constrain_alpha

    def set_alpha_range(self, alpha_range):
        """Bounds `alpha` to `(low, high)` after every optimizer step (None:
        unbounded), and clips it there now. Inside `fit`, sync the training
        state first (`keras_collapse.collapsible.sync_training_state`) and
        retrace the train step after (the constraint is compiled into it)."""
        self._require_built("set_alpha_range")
        self.alpha_range = check_alpha_range(alpha_range)
        self.alpha.constraint = self._constraint_or_none()
        if self.alpha_range is not None:
            alpha = ops.convert_to_numpy(self.alpha) * self.alpha_scale
            self.set_alpha(np.clip(alpha, *self.alpha_range))

    def set_alpha_scale(self, alpha_scale):
        """Changes the slope's learning-rate scale (see `alpha_scale`),
        keeping `alpha`. Inside `fit`, sync the training state first and
        retrace the train step after."""
        self._require_built("set_alpha_scale")
        alpha = ops.convert_to_numpy(self.alpha) * self.alpha_scale
        self.alpha_scale = resolve_alpha_scale(alpha_scale)
        self.set_alpha(alpha)

    def call(self, inputs, training=None):
        act = self._activation_fn(inputs, **self.activation_kwargs)
        if self.alpha.trainable:
            return self._blend(inputs, act, training)
        # Nothing needs alpha's gradient: at rest (alpha 0, unlocked) the layer
        # is its activation alone, and costs no more (torch eager would run
        # every op of the blend).
        at_rest = ops.logical_and(
            self.linear_lock < 0.5, ops.all(ops.equal(self.alpha, 0))
        )
        return ops.cond(
            at_rest, lambda: act, lambda: self._blend(inputs, act, training)
        )

    def _blend(self, inputs, act, training):
        # The lock acts on alpha (a few numbers), not on the activations.
        alpha = ops.cast(self.alpha, act.dtype)
        if self.alpha_scale != 1.0:
            alpha = alpha * self.alpha_scale
        alpha = ops.where(self.linear_lock > 0.5, ops.ones_like(alpha), alpha)
        blended = alpha * inputs + (1 - alpha) * act
        if training:
            # Four elementwise ops, as cheap as the machinery can be: an
            # infinite input makes the loss NaN anyway.
            return blended
        # At x = +-inf, `0 * inf` is NaN: take the blend's limit there, as
        # the plain activation (alpha = 0) or the identity (alpha = 1) does.
        limit = ops.where(alpha == 0, act, ops.where(alpha == 1, inputs, blended))
        return ops.where(ops.isfinite(inputs), blended, limit)

    def compute_output_shape(self, input_shape):
        return input_shape

    @property
    def is_locked(self):
        """bool, whether the layer is locked to the identity."""
        self._require_built("is_locked")
        return bool(ops.convert_to_numpy(self.linear_lock) > 0.5)

    def describe(self):
        """The function it computes now: its activation's name, with the
        slope where alpha is not 0 ("relu a=-0.4", "gelu a=0.1..0.9"), or
        "linear"."""
        if self.is_linear:
            return "linear"
        alpha = self.alpha_numpy()
        if not np.any(alpha):
            return self.activation
        low, high = float(np.min(alpha)), float(np.max(alpha))
        slope = f"{low:.2g}" if low == high else f"{low:.2g}..{high:.2g}"
        return f"{self.activation} a={slope}"

    @property
    def is_linear(self):
        """bool, whether the layer computes the identity (locked or alpha = 1)."""
        return bool(np.all(self.alpha_numpy() == 1.0))

    def alpha_numpy(self):
        """Returns the effective slope as a NumPy array (1 where locked)."""
        self._require_built("alpha_numpy")
        if self.is_locked:
            return np.ones(self.alpha.shape, dtype="float32")
        return ops.convert_to_numpy(self.alpha) * np.float32(self.alpha_scale)

    def set_alpha(self, value):
        """Sets `alpha` from a value that broadcasts to its shape.

        Raises:
            ValueError: if `value` does not broadcast to `alpha`'s shape.
        """
        self._require_built("set_alpha")
        value = np.asarray(value, dtype="float32")
        try:
            value = np.broadcast_to(value, self.alpha.shape)
        except ValueError:
            raise ValueError(
                f"Layer '{self.name}': alpha has shape {tuple(self.alpha.shape)}; "
                f"expected a value that broadcasts to it. Received a value of "
                f"shape {value.shape}"
            ) from None
        self.alpha.assign(value / np.float32(self.alpha_scale))

    def lock_linear(self):
        """Makes the layer exactly the identity, and keeps it so while training.

        Sets `alpha` to 1 and the lock to 1. Inside `fit`, call it through
        `keras_collapse.lock_linear(model, ...)`, which first brings the
        trainer's copy of the variables back to the model (JAX).
        """
        self.set_alpha(1.0)
        self.linear_lock.assign(1.0)

    def unlock(self):
        """Removes the lock; `alpha` keeps its value (1 after `lock_linear`)."""
        self._require_built("unlock")
        self.linear_lock.assign(0.0)

    def _require_built(self, what):
        if not self.built:
            raise ValueError(
                f"Layer '{self.name}' is not built yet, so `{what}` has no "
                "weights to use. Call the layer on an input (or build the model) "
                "first."
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "activation": self.activation,
                "activation_kwargs": dict(self.activation_kwargs),
                "alpha_initializer": keras.initializers.serialize(
                    self.alpha_initializer
                ),
                "alpha_regularizer": keras.regularizers.serialize(
                    self.alpha_regularizer
                ),
                "alpha_constraint": keras.constraints.serialize(self.alpha_constraint),
                "trainable_alpha": self.trainable_alpha,
                "shared_axes": self.shared_axes,
                "alpha_scale": self.alpha_scale,
                "alpha_range": (
                    None if self.alpha_range is None else list(self.alpha_range)
                ),
            }
        )
        return config
