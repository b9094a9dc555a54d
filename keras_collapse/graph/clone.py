"""Copying layers for a new model: from their configs, never sharing weights."""

import inspect

import keras

from keras_collapse.graph import keras_internals


def renamed(layer, name, dtype=None):
    """An unbuilt copy of `layer` from its config, under another name (and
    dtype policy, if given): for layers a pass made, which hold no state
    the config lacks."""
    config = {**layer.get_config(), "name": name}
    if dtype is not None:
        config["dtype"] = dtype
    return type(layer).from_config(config)


def clone_layer(layer, name, dtype=None):
    """A new layer with `layer`'s config (weights are set after building).

    Raises:
        ValueError: if the layer cannot be re-created from its config: sharing
            it would tie the result's weights to the input model's.
    """
    if type(layer) is keras.layers.Lambda:
        return _clone_lambda(layer, name, dtype)
    try:
        config = {**layer.get_config(), "name": name}
        if dtype is not None and "float" in str(layer.compute_dtype):
            config["dtype"] = dtype
        try:
            return layer.__class__.from_config(config)
        except (TypeError, ValueError):
            # Some layers report derived values their __init__ refuses
            # (keras-hub's ViTPatchingAndEmbedding: num_patches).
            # Or an __init__ that takes none of Layer's (keras-cv's
            # HardSigmoidActivation: no name).
            accepted = _init_arguments(layer.__class__)
            if set(config) <= accepted:
                raise
            clone = layer.__class__.from_config(
                {k: v for k, v in config.items() if k in accepted}
            )
            if clone.name != name:
                clone.name = name
            return clone
    except Exception as e:  # a custom layer without a complete get_config
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) cannot be re-created "
            f"from its config ({type(e).__name__}: {e}), so it cannot be copied "
            "into a new model without sharing its weights with the input model. "
            "Give the layer a `get_config()` that returns every argument of its "
            "`__init__` (see keras.layers.Layer.get_config)."
        ) from None


def _clone_lambda(layer, name, dtype=None):
    """A new `Lambda` calling the same function object.

    A Lambda holds no weights, and its config holds its function as Python
    bytecode, which `from_config` refuses outside unsafe deserialization (and
    would re-create as another function): the new layer is given the
    function itself, with its arguments, output shape and mask.
    """
    if dtype is None or "float" not in str(layer.compute_dtype):
        dtype = layer.dtype_policy
    return keras.layers.Lambda(
        layer.function,
        output_shape=keras_internals.lambda_output_shape(layer),
        mask=layer.mask,
        arguments=dict(layer.arguments),
        name=name,
        dtype=dtype,
        trainable=layer.trainable,
    )


# What keras.layers.Layer.__init__ accepts besides a subclass's own arguments.
_LAYER_ARGUMENTS = {"name", "trainable", "dtype", "autocast", "activity_regularizer"}


def _init_arguments(cls):
    """The keyword arguments `cls(**config)` can take: each `__init__`'s own,
    up the classes its `**kwargs` reach (keras.layers.Layer's own among
    them), or only its own where an `__init__` takes no `**kwargs`."""

    names = set()
    for klass in cls.__mro__:
        if not issubclass(klass, keras.layers.Layer):
            break
        if klass is keras.layers.Layer:
            return names | _LAYER_ARGUMENTS
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {
            p.name
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names - {"self"}
    return names
