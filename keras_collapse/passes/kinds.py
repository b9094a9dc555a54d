"""What a node of the graph is: linear op, BatchNorm, activation, identity.

Exact types are matched on purpose: a subclass of Conv2D may override `call`,
so only the stock layers are taken apart; anything else passes through.
"""

import keras
import numpy as np

from keras_collapse.layers import CollapsibleActivation

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
            if fn is not None and activation_spec(fn) == (name, kwargs):
                return fn
    return None


def activation_spec(fn):
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
