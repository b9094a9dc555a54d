"""What a node of the graph is: linear op, BatchNorm, activation, identity.

`activation_spec` names the elementwise activation a node applies, in every
form Keras models hold one (layer, raw op, fused into a Conv/Dense).

Exact types are matched on purpose: a subclass of Conv2D may override `call`,
so only the stock layers are taken apart; anything else passes through.
"""

import inspect
import typing

import keras
import numpy as np

from keras_collapse.layers import CollapsibleActivation
from keras_collapse.layers.collapsible_activation import resolve_activation

CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D)
DEPTHWISE_TYPES = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
IDENTITY_AT_INFERENCE = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
)
# Raw activations in a functional graph, by operation class name. `keras.ops.relu`
# adds "Relu"; `keras.activations.relu` adds "ReLU" (with negative_slope,
# max_value and threshold).
OP_ACTIVATIONS = {
    "ReLU": "relu",
    "Celu": "celu",
    "Softsign": "softsign",
    "SparsePlus": "sparse_plus",
    "Squareplus": "squareplus",
    "LogSigmoid": "log_sigmoid",
    "SparseSigmoid": "sparse_sigmoid",
    "HardTanh": "hard_tanh",
    "HardShrink": "hard_shrink",
    "SoftShrink": "soft_shrink",
    "TanhShrink": "tanh_shrink",
    "Relu": "relu",
    "Relu6": "relu6",
    "Gelu": "gelu",
    "Silu": "silu",
    "LeakyRelu": "leaky_relu",
    "Elu": "elu",
    "Selu": "selu",
    "Softplus": "softplus",
    "HardSilu": "hard_silu",
    "Sigmoid": "sigmoid",
    "HardSigmoid": "hard_sigmoid",
    "Tanh": "tanh",
}


def is_conv(layer):
    return (
        type(layer) in CONV_TYPES
        and layer.data_format == "channels_last"
        and layer.groups == 1
        and all(d == 1 for d in layer.dilation_rate)
    )


def is_depthwise(layer):
    return (
        type(layer) in DEPTHWISE_TYPES
        and layer.data_format == "channels_last"
        and all(d == 1 for d in layer.dilation_rate)
    )


def is_dense(layer):
    return type(layer) is keras.layers.Dense and layer.lora_rank is None


def is_linear_op(layer):
    """A stock Conv/Depthwise/Dense whose fused activation is the identity."""
    return (is_conv(layer) or is_depthwise(layer) or is_dense(layer)) and (
        activation_name(layer.activation) == "linear"
    )


def is_batchnorm(layer):
    return type(layer) is keras.layers.BatchNormalization


def activation_name(fn):
    """The name of an activation function ('linear', 'relu', ...).

    Keras' activations are plain functions named after themselves (`swish`
    resolves to `silu`); `keras.activations.serialize` gives the same answer
    but is ~1000x slower.
    """
    return getattr(fn, "__name__", None) or keras.activations.serialize(fn)


# Activations other libraries define as a Keras activation with fixed
# arguments, with the names they register them under: keras-hub's BERT, ViT
# and GPT-2 MLPs use `gelu_approximate`.
ALIASES = {
    "gelu_approximate": ("gelu", {"approximate": True}, ("keras_hub>gelu_approximate",))
}
_CONFIRMED = {}  # id(fn) -> (fn, (name, kwargs) or None)


def registered_alias(name, kwargs):
    """A registered function that computes activation `name(**kwargs)` (the
    plain form of an alias: `Activation(fn)` loads wherever its library is
    imported), or None."""
    for target, fixed, registered in ALIASES.values():
        if target != name or fixed != kwargs:
            continue
        for key in registered:
            fn = keras.saving.get_registered_object(key)
            if fn is not None and function_spec(fn) == (name, kwargs):
                return fn
    return None


def function_spec(fn):
    """`(name, kwargs)` of an activation function: its own name and no
    arguments, or the Keras activation an alias computes (checked on a grid
    of values, once per function)."""
    name = activation_name(fn)
    if not isinstance(name, str) or name not in ALIASES:
        return name, {}
    cached = _CONFIRMED.get(id(fn))
    if cached is None or cached[0] is not fn:
        target, kwargs, _ = ALIASES[name]
        x = np.linspace(-8.0, 8.0, 161, dtype="float32")
        got = keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(x)))
        want = keras.ops.convert_to_numpy(keras.activations.get(target)(x, **kwargs))
        same = np.allclose(got, want, rtol=1e-5, atol=1e-6)
        cached = _CONFIRMED[id(fn)] = (fn, (target, dict(kwargs)) if same else None)
    return cached[1] or (name, {})


def is_identity_at_inference(node):
    """Layers that return their input at inference (unless forced to train)."""
    layer = node.layer
    if node.kwargs.get("training") is True:
        return False
    if isinstance(layer, IDENTITY_AT_INFERENCE):
        return True
    if type(layer) is keras.layers.Activation:
        return activation_name(layer.activation) == "linear"
    if isinstance(layer, CollapsibleActivation):
        return layer.is_linear
    return False


def is_collapsible(layer):
    return isinstance(layer, CollapsibleActivation)


# Layers whose `activation=` argument fuses an activation after the linear op.
FUSED_TYPES = (
    keras.layers.Dense,
    keras.layers.EinsumDense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)


class ActivationSpec(typing.NamedTuple):
    """The elementwise activation a node applies.

    `name` and `kwargs` are the `keras.activations` function and its keyword
    arguments, normalized: a ReLU capped at 6 is `("relu6", {})`, a ReLU with
    only a negative slope `("leaky_relu", {"negative_slope": s})`. `alpha` is
    the slope of a `keras.layers.PReLU` (then `name` is `"relu"`), else None.
    """

    name: str
    kwargs: dict
    alpha: np.ndarray | None = None

    @property
    def kind(self):
        """The name `make_collapsible(activations=...)` selects it by."""
        return "prelu" if self.alpha is not None else self.name


def activation_spec(node):
    """Returns the `ActivationSpec` of a graph node, or None.

    A node is an activation when it calls a `keras.layers.ReLU`, `LeakyReLU`,
    `ELU`, `PReLU` or `Activation` layer, a raw activation operation (a
    `keras.ops` or `keras.activations` call on a KerasTensor), or a stock
    Conv/Dense layer (`FUSED_TYPES`) with a fused `activation`; and when that
    activation is elementwise (softmax, linear and unknown functions are not).
    A ReLU with a nonzero `threshold` is reported with its `threshold`.

    Args:
        node: a `keras_collapse.graph.Node`.

    Returns:
        `ActivationSpec` or None.

    Example:

    >>> from keras_collapse.graph import Graph
    >>> from keras_collapse.graph.kinds import activation_spec
    >>> x = keras.Input((4,))
    >>> y = keras.layers.ReLU(max_value=6.0)(x)
    >>> graph = Graph.from_model(keras.Model(x, y))
    >>> activation_spec(graph.layer_nodes()[0])  # counted as relu6
    ActivationSpec(name='relu6', kwargs={}, alpha=None)
    """
    if node.is_input or len(node.input_refs) != 1:
        return None
    layer = node.layer
    kind = type(layer)
    if kind is keras.layers.ReLU:
        return _spec(
            "relu",
            {
                "negative_slope": layer.negative_slope,
                "max_value": layer.max_value,
                "threshold": layer.threshold,
            },
        )
    if kind is keras.layers.LeakyReLU:
        return _spec("leaky_relu", {"negative_slope": layer.negative_slope})
    if kind is keras.layers.ELU:
        return _spec("elu", {"alpha": layer.alpha})
    if kind is keras.layers.PReLU:
        return ActivationSpec("relu", {}, np.asarray(layer.get_weights()[0]))
    if kind is keras.layers.Activation or is_fused_activation(layer):
        return _spec(*function_spec(layer.activation))
    if isinstance(layer, keras.layers.Layer):
        return None
    name = OP_ACTIVATIONS.get(type(layer).__name__)
    if name is None:
        return None
    return _spec(name, _op_kwargs(layer, name))


def is_fused_activation(layer):
    """Whether `layer` is a stock Conv/Dense with a non-linear fused activation."""
    return type(layer) in FUSED_TYPES and activation_name(layer.activation) != "linear"


def _op_kwargs(operation, name):
    """The activation's keyword arguments, read from the operation's attributes
    (e.g. `approximate` of Gelu, `negative_slope` of LeakyRelu)."""
    params = list(inspect.signature(keras.activations.get(name)).parameters)[1:]
    return {p: getattr(operation, p) for p in params if hasattr(operation, p)}


def _spec(name, kwargs):
    if name == "relu":
        name, kwargs = _normalize_relu(**kwargs)
    try:
        name, _, kwargs = resolve_activation(name, kwargs)
    except ValueError:  # not elementwise, linear, or unknown
        return None
    return ActivationSpec(name, kwargs)


def _normalize_relu(negative_slope=0.0, max_value=None, threshold=0.0):
    slope = float(negative_slope or 0.0)
    cap = None if max_value is None else float(max_value)
    if threshold:
        kwargs = {"negative_slope": slope, "max_value": cap}
        kwargs = {k: v for k, v in kwargs.items() if v}
        return "relu", {**kwargs, "threshold": float(threshold)}
    if slope == 0.0 and cap is None:
        return "relu", {}
    if slope == 0.0 and cap == 6.0:
        return "relu6", {}
    if cap is None:
        return "leaky_relu", {"negative_slope": slope}
    return "relu", {"negative_slope": slope, "max_value": cap}
