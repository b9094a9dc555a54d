"""Seeing inside composite layers: a layer that calls other layers (keras-hub's
`TransformerEncoder`, a MobileNet block, your own) is read as the functional
subgraph of the layers and operations it calls, so the one graph engine
reaches the activations and linear layers inside.

How a composite layer is unrolled (`unroller_for`):

- an unroller registered for its class (`register_unroller`), or
- by default, when every weight it holds belongs to a sublayer and it is not
  one of Keras' own layers (those stay whole: `MultiHeadAttention` is one
  node), its own `call` traced on symbolic inputs: the sublayers and
  `keras.ops` it calls become the subgraph's nodes.

Each unrolled subgraph is checked once against the layer itself on random
inputs that fit it (inference mode); a layer whose trace fails or differs is
kept whole and listed as opaque, with the reason. So is a layer whose call
depends on the mode in a way a functional graph cannot hold (a Keras model
passes its own `training` to every layer): a call that builds another graph
with `training=True` (a train-time scale, drop-path), found by tracing it in
both modes, or that pins a sublayer (`self.bn(h, training=False)`). Kept
whole, the layer keeps that behaviour. Traces are cached per layer
and input signature: tracing adds nodes to the sublayers' call history (as
calling a layer on `keras.Input` does), once, and changes no weight.
"""

import dataclasses
import inspect
import weakref

import keras
import numpy as np

from keras_collapse.graph import keras_internals
from keras_collapse.graph.random_arrays import layer_id_range
from keras_collapse.graph.random_arrays import random_arrays

_UNROLLERS = {}  # class or "module.Class" path -> unroller, or None
_TRACES = weakref.WeakKeyDictionary()  # layer -> {signature: Trace}
_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class Opaque:
    """A composite layer the engine could not see into: kept whole."""

    name: str
    class_name: str
    reason: str

    def __str__(self):
        return (
            f"{self.name} ({self.class_name}): {self.reason}; teach it with "
            "keras_collapse.register_unroller"
        )


@dataclasses.dataclass
class Trace:
    """The functional subgraph a composite layer unrolled into, or why not."""

    functional: object = None  # a Functional keras.Model, inputs = tensor args
    opaque: Opaque = None


def register_unroller(layer_class, unroller="trace"):
    """Teaches the graph engine to see inside a composite layer class.

    `make_collapsible`, `surgery` and every analysis read a layer of this
    class (or of a subclass) as the subgraph `unroller` builds: its
    activations can then be made collapsible, its linear layers merged.

    Args:
        layer_class: a `keras.layers.Layer` subclass, or its path
            `"package.module.Class"` (registering then imports nothing).
        unroller: how to unroll it:
            - `"trace"` (default): trace the layer's own `call` (what the
              engine does by default for a layer whose weights all live in
              sublayers; register to force it, e.g. for a class that holds a
              weight it never uses).
            - a callable `unroller(layer, *args, **kwargs) -> outputs`, called
              with the layer and the symbolic inputs of one of its calls
              (`keras.KerasTensor`s where the call had tensors, the other
              arguments as given). It returns the outputs computed from them
              with `keras.ops` and layers: best the layer's own sublayers (the
              model's weights, trained in place); a layer it creates holds a
              copy of weights (set them after calling it).
            - `None`: keep the class whole (opaque), even where tracing would
              work.

    Returns:
        `layer_class`, so that it can decorate a class.

    Example (registering is global, for the rest of the process):

        @keras_collapse.register_unroller
        class Block(keras.layers.Layer):
            ...

        keras_collapse.register_unroller(
            Scaled, lambda layer, x: layer.dense(x) * layer.scale
        )
    """
    is_layer_class = inspect.isclass(layer_class) and issubclass(
        layer_class, keras.layers.Layer
    )
    is_path = isinstance(layer_class, str) and "." in layer_class
    if not (is_layer_class or is_path):
        raise ValueError(
            "register_unroller expects a keras.layers.Layer subclass or its "
            f'"module.Class" path. Received: {layer_class!r}'
        )
    if not (unroller is None or unroller == "trace" or callable(unroller)):
        raise ValueError(
            'unroller must be "trace", a callable (layer, *args, **kwargs) -> '
            f"outputs, or None. Received: {unroller!r}"
        )
    _UNROLLERS[layer_class] = unroller
    _TRACES.clear()
    return layer_class


def registered_unroller(layer):
    """The unroller registered for `layer`'s class or nearest base class:
    (True, unroller) or (False, None) when none is."""
    _register_builtins()
    for cls in type(layer).__mro__:
        for key in (cls, f"{cls.__module__}.{cls.__qualname__}"):
            if key in _UNROLLERS:
                return True, _UNROLLERS[key]
    return False, None


_BUILTINS_REGISTERED = []


def _register_builtins():
    # keras_collapse's own unrollers (keras-hub layers tracing cannot read),
    # registered by path on first use: neither a user's registration nor
    # keras_collapse's import pulls in keras-hub.
    if not _BUILTINS_REGISTERED:
        from keras_collapse.graph import hub_unrollers

        for path, unroller in hub_unrollers.UNROLLERS.items():
            _UNROLLERS.setdefault(path, unroller)
        _BUILTINS_REGISTERED.append(True)


def is_composite(layer):
    """Whether `layer` calls layers of its own (a keras.Model is inlined
    elsewhere)."""
    return (
        isinstance(layer, keras.layers.Layer)
        and not isinstance(layer, keras.Model)
        and len(keras_internals.sublayers(layer)) > 1
    )


def trace(layer, args, kwargs):
    """The `Trace` of one call of `layer` (args/kwargs with KerasTensors), or
    None when the layer is not composite (a plain layer)."""
    if not is_composite(layer):
        return None
    registered, unroller = registered_unroller(layer)
    if registered and unroller is None:
        return Trace(opaque=_opaque(layer, "registered to stay whole"))
    if not registered:
        if type(layer).__module__.startswith("keras."):
            return None  # Keras' own layers are read whole
        own = _own_weights(layer)
        if own:
            names = ", ".join(v.path.split("/")[-1] for v in own[:3])
            return Trace(opaque=_opaque(layer, f"holds weights of its own ({names})"))
        unroller = "trace"
    key = _signature(args, kwargs)
    cache = _TRACES.setdefault(layer, {})
    if key not in cache:
        cache[key] = _unroll(layer, unroller, args, kwargs)
    return cache[key]


def _unroll(layer, unroller, args, kwargs):
    tensors = [x for x in keras.tree.flatten((args, kwargs)) if _is_tensor(x)]
    names = {id(v): k for k, v in kwargs.items() if _is_tensor(v)}
    placeholders = {}
    for t in tensors:
        if id(t) not in placeholders:
            # Named as the argument: a `padding_mask` gets a mask's sample.
            placeholders[id(t)] = keras.Input(
                batch_shape=t.shape,
                dtype=t.dtype,
                sparse=t.sparse,
                name=names.get(id(t)),
            )

    def to_placeholder(x):
        return placeholders.get(id(x), x) if _is_tensor(x) else x

    p_args = keras.tree.map_structure(to_placeholder, args)
    p_kwargs = keras.tree.map_structure(to_placeholder, kwargs)
    inputs = list(dict.fromkeys(id(t) for t in tensors))
    inputs = [placeholders[i] for i in inputs]
    try:
        if unroller == "trace":
            outputs = layer.call(*p_args, **_call_kwargs(layer, p_kwargs))
        else:
            outputs = unroller(layer, *p_args, **p_kwargs)
        functional = keras.Model(
            inputs if len(inputs) > 1 else inputs[0],
            outputs,
            name=f"{layer.name}_unrolled",
        )
    except Exception as e:
        what = f"{type(e).__name__}: {_first_line(e)}"
        reason = f"its call could not be traced ({what})"
        return Trace(opaque=_opaque(layer, reason))
    if unroller == "trace":
        # A sublayer called on a constant ran eagerly: its output is baked
        # in, and its weights would no longer train.
        used = {id(v) for v in functional.weights}
        unused = [v.path for v in layer.weights if id(v) not in used]
        if unused:
            reason = (
                "its call reads weights outside the traced graph "
                f"({', '.join(unused[:3])})"
            )
            return Trace(opaque=_opaque(layer, reason))
    problem = None
    if unroller == "trace":
        problem = _mode_dependence(layer, functional, inputs, p_args, p_kwargs)
    if problem is None:
        problem = _check(layer, functional, args, kwargs, tensors)
    if problem:
        return Trace(opaque=_opaque(layer, problem))
    return Trace(functional=functional)


def _call_kwargs(layer, kwargs):
    # `training` is resolved by each sublayer from the outer call's context.
    return {k: v for k, v in kwargs.items() if k != "training"}


def _mode_dependence(layer, functional, inputs, p_args, p_kwargs):
    """Why the unrolled graph cannot compute what the layer computes in
    training, or None.

    The trace runs `call` without `training`. Traced again as inside a call
    of the layer with `training=True` and with `False` (each sublayer not
    given `training` then takes that mode, as in an eager call), two things
    show that one functional graph cannot hold it (a Keras model passes its
    own `training` to every layer it calls):

    - another graph in one mode (the modes each sublayer receives aside): a
      Python branch on `training` (a train-time scale, stochastic depth /
      drop-path); the inference trace would silently drop it;
    - a sublayer given `training=False` while the layer trains: a mode
      pinned in `call` (`self.bn(h, training=False)`), which the model
      would override, so a pinned BatchNormalization would start updating
      its statistics in `fit`.
    """
    owned = {id(sub) for sub in keras_internals.sublayers(layer)}
    reference = _structure(functional, owned)
    kwargs = _call_kwargs(layer, p_kwargs)
    for mode in (True, False):
        mode_kwargs = {**kwargs, "training": mode} if _takes_training(layer) else kwargs
        try:
            with keras_internals.training_context(mode):
                outputs = layer.call(*p_args, **mode_kwargs)
            traced = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs)
        except Exception as e:
            what = f"{type(e).__name__}: {_first_line(e)}"
            return f"its call could not be traced with training={mode} ({what})"
        if _structure(traced, owned) != reference:
            return (
                f"its call computes another graph with training={mode} (a "
                "branch on `training`, e.g. a train-time scale or drop-path), "
                "which one functional graph cannot hold; kept whole, it keeps "
                "its training behaviour"
            )
        pinned = _pinned(traced, mode)
        if pinned is not None:
            return (
                f"its call pins sublayer '{pinned}' to training={not mode}, "
                "which a functional graph cannot keep (a Keras model passes "
                "its own training mode to every layer); kept whole, it keeps "
                "that mode"
            )
    return None


def _pinned(functional, mode):
    """The name of the first sublayer called with another `training` than
    `mode`, the mode of the trace, or None."""
    for operation, _, kwargs, _ in keras_internals.graph_nodes(functional):
        given = kwargs.get("training")
        if isinstance(given, bool) and given is not mode:
            return getattr(operation, "name", type(operation).__name__)
    return None


def _takes_training(layer):
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def _structure(functional, owned):
    """What a traced graph computes, comparable between traces: each node's
    operation (a sublayer of the layer, `owned` ids, by identity; a layer
    its call creates, or an operation, by class and configuration), its
    inputs (by position) and constant arguments; modes aside."""
    positions = {id(t): i for i, t in enumerate(keras.tree.flatten(functional.inputs))}

    def spec(x):
        if _is_tensor(x):
            return ("tensor", positions.get(id(x), -1))
        if isinstance(x, np.ndarray):
            return ("array", x.shape, str(x.dtype), x.tobytes())
        return repr(x)

    nodes = []
    for operation, args, kwargs, outputs in keras_internals.graph_nodes(functional):
        kwargs = {k: v for k, v in kwargs.items() if k != "training"}
        nodes.append(
            (
                _operation_key(operation, owned),
                keras.tree.map_structure(spec, (args, kwargs)),
            )
        )
        for t in outputs:
            positions[id(t)] = len(positions)
    outputs = [positions.get(id(t), -1) for t in keras.tree.flatten(functional.outputs)]
    return nodes, outputs


def _operation_key(operation, owned):
    if id(operation) in owned:
        return ("layer", id(operation))
    if isinstance(operation, keras.layers.Layer):
        try:
            config = operation.get_config()
        except Exception:
            config = {}
        attributes = {k: v for k, v in config.items() if k != "name"}
    else:
        attributes = {
            k: v
            for k, v in vars(operation).items()
            if not k.startswith("_") and k != "name"
        }
    return (
        type(operation).__name__,
        sorted((k, repr(v)) for k, v in attributes.items()),
    )


def _check(layer, functional, args, kwargs, tensors):
    """Why the unrolled subgraph does not compute what the layer does on
    random inputs that fit it, or None."""
    try:
        # One size for every unknown axis: a sequence and its mask agree.
        sizes = [tuple(d or 8 for d in t.shape[1:]) for t in functional.inputs]
        # Which sublayer an id input reaches is not known below the graph:
        # ids fit every id-taking sublayer.
        id_range = layer_id_range([layer])
        id_ranges = (
            {i: id_range for i in range(len(functional.inputs))} if id_range else {}
        )
        values = random_arrays(functional, id_ranges, sizes, batch_size=2, seed=0)
        values = values if isinstance(values, list) else [values]
        by_id = dict(
            zip(list(dict.fromkeys(id(t) for t in tensors)), values, strict=True)
        )

        def to_value(x):
            return by_id[id(x)] if _is_tensor(x) else x

        expected = layer(
            *keras.tree.map_structure(to_value, args),
            **keras.tree.map_structure(to_value, kwargs),
        )
        got = functional(values if len(values) > 1 else values[0], training=False)
    except Exception as e:
        what = f"{type(e).__name__}: {_first_line(e)}"
        return f"its unrolled graph could not be checked ({what})"
    expected, got = keras.tree.flatten(expected), keras.tree.flatten(got)
    if len(expected) != len(got):
        return "its unrolled graph returns a different number of outputs"
    for e, g in zip(expected, got):
        e = np.asarray(keras.ops.convert_to_numpy(e), "float64")
        g = np.asarray(keras.ops.convert_to_numpy(g), "float64")
        if e.shape != g.shape:
            return f"its unrolled graph returns shape {g.shape}, not {e.shape}"
        scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
        error = float(np.max(np.abs(e - g), initial=0.0))
        if not np.isfinite(error) or error > _TOLERANCE * scale:
            return (
                "its unrolled graph computes differently on random inputs "
                f"(max deviation {error:.3g}); it may depend on state its call "
                "reads outside its sublayers"
            )
    return None


def _own_weights(layer):
    inner = {id(v) for sub in keras_internals.sublayers(layer)[1:] for v in sub.weights}
    return [v for v in layer.weights if id(v) not in inner]


def _signature(args, kwargs):
    def spec(x):
        if _is_tensor(x):
            return ("tensor", tuple(x.shape), str(x.dtype))
        try:
            hash(x)
            return x
        except TypeError:
            return repr(x)

    return repr(keras.tree.map_structure(spec, (args, kwargs)))


def _is_tensor(x):
    return isinstance(x, keras.KerasTensor)


def _opaque(layer, reason):
    return Opaque(layer.name, type(layer).__name__, reason)


def _first_line(error):
    return (str(error).strip().splitlines() or [""])[0][:200]
