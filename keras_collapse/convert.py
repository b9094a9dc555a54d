"""Turning the activations of a trained model into collapsible ones.

`make_collapsible` reads a model into a `Graph`, replaces the chosen
activations (layers, raw `keras.ops` calls, or activations fused into a
Conv/Dense) by `CollapsibleActivation` / `CollapsiblePReLU` layers at
`alpha = 0`, and rebuilds a new model that computes the same function.
"""

import collections
import math
import warnings

import keras
import numpy as np

from keras_collapse.graph import Graph
from keras_collapse.graph import Ref
from keras_collapse.graph import keras_internals
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite
from keras_collapse.graph.ir import unrolled_prefix
from keras_collapse.graph.kinds import FUSED_TYPES
from keras_collapse.graph.kinds import activation_spec
from keras_collapse.graph.kinds import is_fused_activation
from keras_collapse.graph.names import Names
from keras_collapse.layers import CollapsibleActivation
from keras_collapse.layers import CollapsiblePReLU
from keras_collapse.layers.collapsible_activation import check_trainable_alpha
from keras_collapse.layers.collapsible_activation import resolve_alpha_scale

DEFAULT_KINDS = (
    "relu",
    "relu6",
    "leaky_relu",
    "prelu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "hard_silu",
    "mish",
    "softplus",
    "sparse_plus",
    "squareplus",
)
# Saturating or shrinking activations: converted only when asked for.
OTHER_KINDS = (
    "sigmoid",
    "hard_sigmoid",
    "log_sigmoid",
    "sparse_sigmoid",
    "tanh",
    "hard_tanh",
    "softsign",
    "exponential",
    "hard_shrink",
    "soft_shrink",
    "tanh_shrink",
)
KINDS = DEFAULT_KINDS + OTHER_KINDS
_SUB_OBJECTS = (
    keras.initializers.Initializer,
    keras.regularizers.Regularizer,
    keras.constraints.Constraint,
)


def make_collapsible(
    model,
    activations=None,
    layer_names=None,
    predicate=None,
    alpha_regularizer=None,
    shared_axes="all",
    fraction=None,
    trainable_alpha=None,
    alpha_scale=None,
):
    """Returns a new model whose chosen activations are collapsible.

    Each chosen activation becomes a `CollapsiblePReLU` (plain ReLU and
    PReLU) or a `CollapsibleActivation` (any other) at `alpha = 0`, so the new
    model computes what `model` computes, with its weights copied. `model`
    itself is never modified. Nested models are flattened into one graph.

    Activations are found in every form Keras models use: `ReLU`, `LeakyReLU`,
    `ELU`, `PReLU` and `Activation` layers, raw `keras.ops` /
    `keras.activations` calls on KerasTensors, and activations fused into
    Conv/Dense layers (`activation="relu"`), which are split out: the layer
    keeps its name with `activation="linear"` and the collapsible layer after
    it is named `"<layer>_<kind>"` (e.g. `"conv1_relu"`). A replaced
    activation layer or operation lends its name to its replacement.

    Kinds are canonical `keras.activations` names, plus `"prelu"`:
    a ReLU capped at 6 (`ReLU(max_value=6)`) counts as `"relu6"`, a ReLU with
    only a negative slope as `"leaky_relu"`, any other ReLU as `"relu"`;
    `"swish"` is `"silu"`.

    Choosing. With no selector, the default rule converts every activation
    whose kind is in `DEFAULT_KINDS` (relu, relu6, leaky_relu, prelu, elu,
    selu, celu, gelu, silu, hard_silu, mish, softplus, sparse_plus,
    squareplus), except one whose output is a model output (a head) or is read
    directly by a `Multiply` layer or a multiply operation (a gate, as in
    squeeze-and-excitation or MobileNetV3's hard-sigmoid): sigmoid,
    hard_sigmoid, tanh and the other saturating kinds are never converted by
    default, softmax never at all (it is not elementwise). Given one or more
    selectors, an activation is converted when it satisfies all of them, and
    the default rule does not apply. A layer called at several places is
    converted at all of them (its replacement is shared the same way) or, if
    not chosen at all of them, at none. A ReLU with a nonzero `threshold` is
    not collapsible: it is left as it is, with a warning.

    Args:
        model: a Functional or Sequential `keras.Model` with a known input
            shape.
        activations: str or list of str, the kinds to convert, from `KINDS`
            (aliases such as `"swish"` accepted). Defaults to `None`.
        layer_names: str or list of str, names of the layers (or raw
            operations) holding the activations to convert; for a fused
            activation, the Conv/Dense layer's name. Defaults to `None`.
        predicate: callable `predicate(layer) -> bool` on the layer (or raw
            operation, or Conv/Dense with a fused activation) holding each
            activation. Defaults to `None`.
        alpha_regularizer: the regularizer of every new `alpha`: `None` for
            no pull, `"linearity"` or a `LinearityRegularizer` for the
            LayerCollapse pull toward the identity. Defaults to `None`.
        shared_axes: `shared_axes` of the new layers (see
            `CollapsibleActivation`). A replaced `PReLU` keeps its own
            `shared_axes` and its `alpha`. Defaults to `"all"`.
        fraction: None, or a float in (0, 1]: of the activations chosen,
            convert only the deepest `ceil(fraction * n)` (the last in the
            graph's order, nearest the outputs). LayerCollapse collapses
            the deepest MLPs of a transformer first. Defaults to `None`
            (all).
        trainable_alpha: `trainable_alpha` of the new layers: None trains
            each `alpha` only when `alpha_regularizer` pulls it (a frozen
            slope costs nothing in training until a callback moves it), True
            always (as a PReLU's slope), False never. Defaults to `None`.
        alpha_scale: `alpha_scale` of the new layers, the slopes' own
            learning-rate scale (see `CollapsibleActivation`): None gives 32
            with `alpha_regularizer` (the pull then reaches the identity at
            normal learning rates), else 1. Defaults to `None`.

    Returns:
        A new `keras.Model`.

    Raises:
        ValueError: if `model` is not a Functional or built Sequential model,
            if `fraction` is not in (0, 1], if `activations` names an
            unknown or non-elementwise kind, if
            `layer_names` names a layer that does not exist or is not a
            collapsible activation, or if `predicate` is not callable.

    Example:

    >>> x = keras.Input((8,))
    >>> h = keras.layers.Dense(16, activation="relu", name="fc1")(x)
    >>> model = keras.Model(x, keras.layers.Dense(2, name="out")(h))
    >>> new = kc.make_collapsible(model)
    >>> [layer.name for layer in new.layers][1:]  # fc1 split in two
    ['fc1', 'fc1_relu', 'out']
    """
    if fraction is not None and (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float, np.integer, np.floating))
        or not 0 < fraction <= 1
    ):
        raise ValueError(
            "`fraction` must be None or a number in (0, 1], the share of the "
            f"chosen activations to convert, deepest first. Received: "
            f"fraction={fraction!r}"
        )
    check_trainable_alpha(trainable_alpha)
    resolve_alpha_scale(alpha_scale)  # checked before any work
    graph = Graph.from_model(model)
    _warn_opaque(graph)
    wanted_kinds = _resolve_kinds(activations)
    wanted_names = _as_names(layer_names)
    if predicate is not None and not callable(predicate):
        raise ValueError(
            "`predicate` must be a callable `predicate(layer) -> bool`. "
            f"Received: predicate={predicate!r}"
        )
    found = [(node, activation_spec(node)) for node in graph.layer_nodes()]
    found = [(node, spec) for node, spec in found if spec is not None]
    if wanted_names is not None:
        _check_names(graph, found, wanted_names)
    selectors = (wanted_kinds, wanted_names, predicate)
    if all(s is None for s in selectors):
        chosen = _default_choice(graph, found)
    else:
        chosen = [item for item in found if _matches(*item, *selectors)]
        if not chosen and found:
            _warn_nothing_matched(graph, found, activations, predicate)
    chosen = _whole_layers(graph, _collapsible_only(chosen))
    if fraction is not None:
        chosen = _deepest(graph, chosen, fraction)
    options = {
        "alpha_regularizer": alpha_regularizer,
        "trainable_alpha": trainable_alpha,
        "alpha_scale": alpha_scale,
    }
    _convert(graph, chosen, options, shared_axes)
    return graph.to_model()


# ------------------------------------------------------------------ choosing
def _warn_nothing_matched(graph, found, activations, predicate):
    kinds_found = sorted({spec.kind for _, spec in found})
    asked = []
    if activations is not None:
        asked.append(f"activations={activations!r}")
    if predicate is not None:
        asked.append("predicate")
    warnings.warn(
        f"make_collapsible converted nothing in model '{graph.name}': no "
        f"activation matched {' and '.join(asked) or 'the selection'}. The "
        f"model's activations are of kinds {kinds_found}; pass one of those "
        "to `activations=`, or leave it out for the default choice.",
        stacklevel=3,
    )


def _resolve_kinds(activations):
    if activations is None:
        return None
    resolved = set()
    for name in _as_names(activations, what="activations"):
        kind = name if name == "prelu" else _canonical(name)
        if kind not in KINDS:
            raise ValueError(
                "`activations` must name elementwise activations, one of "
                f"{sorted(KINDS)} (aliases such as 'swish' are accepted). "
                f"Received: {name!r} in activations={activations!r}"
            )
        resolved.add(kind)
    return resolved


def _canonical(name):
    try:
        canonical = keras.activations.serialize(keras.activations.get(name))
    except (ValueError, TypeError):
        return name
    return canonical if isinstance(canonical, str) else name


def _as_names(names, what="layer_names"):
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple, set)) or not all(
        isinstance(n, str) for n in names
    ):
        raise ValueError(
            f"`{what}` must be a string or a list of strings. "
            f"Received: {what}={names!r}"
        )
    return set(names)


def _check_names(graph, found, names):
    existing = {name for node in graph.layer_nodes() for name in _names(node)}
    missing = sorted(names - existing)
    if missing:
        raise ValueError(
            f"`layer_names` must name layers of model '{graph.name}' (nested "
            f"models included). Received names that do not exist: {missing}"
        )
    collapsible = {
        name for node, spec in found if _is_collapsible(spec) for name in _names(node)
    }
    not_activations = sorted(names - collapsible)
    if not_activations:
        raise ValueError(
            "`layer_names` must name layers holding a collapsible elementwise "
            f"activation, among {sorted(collapsible)}. Received: "
            f"{not_activations} (not activations, not elementwise, or a ReLU "
            "with a nonzero threshold)"
        )


def _matches(node, spec, kinds_, names, predicate):
    return (
        (kinds_ is None or spec.kind in kinds_)
        and (names is None or not names.isdisjoint(_names(node)))
        and (predicate is None or bool(predicate(node.layer)))
    )


def _default_choice(graph, found):
    readers = rewrite.readers(graph)
    return [
        (node, spec)
        for node, spec in found
        if spec.kind in DEFAULT_KINDS
        and not any(_is_gate_or_output(r) for r in readers.of(Ref(node.id)))
    ]


def _is_gate_or_output(reader):
    if reader is None:
        return True
    layer = reader.layer
    if isinstance(layer, keras.layers.Layer):
        return isinstance(layer, keras.layers.Multiply)
    return type(layer).__name__ == "Multiply"


def _is_collapsible(spec):
    return not spec.kwargs.get("threshold")


def _collapsible_only(chosen):
    thresholded = [_name(n.layer) for n, spec in chosen if not _is_collapsible(spec)]
    if thresholded:
        warnings.warn(
            f"Left {thresholded} unchanged: a ReLU with a nonzero `threshold` is "
            "not collapsible.",
            stacklevel=3,
        )
    return [(node, spec) for node, spec in chosen if _is_collapsible(spec)]


def _whole_layers(graph, chosen):
    """Drops layers chosen at only some of the places they are called."""
    calls = collections.Counter(id(n.layer) for n in graph.layer_nodes())
    picked = collections.Counter(id(n.layer) for n, _ in chosen)
    partial = sorted(
        {_name(n.layer) for n, _ in chosen if picked[id(n.layer)] != calls[id(n.layer)]}
    )
    if partial:
        warnings.warn(
            f"Left {partial} unchanged: each is called at several places and was "
            "chosen at only some of them.",
            stacklevel=3,
        )
    return [(n, s) for n, s in chosen if picked[id(n.layer)] == calls[id(n.layer)]]


def _holds_activation(layer):
    if type(layer) in FUSED_TYPES:
        return is_fused_activation(layer)
    if isinstance(layer, keras.layers.Activation):
        return kinds.activation_name(layer.activation) != "linear"
    return isinstance(
        layer,
        (
            keras.layers.ReLU,
            keras.layers.LeakyReLU,
            keras.layers.ELU,
            keras.layers.PReLU,
        ),
    )


def _deepest(graph, chosen, fraction):
    """The deepest `ceil(fraction * n)` of the chosen layers, by the last
    place each is called in the graph's order; a layer's calls go together."""
    order = {node.id: i for i, node in enumerate(graph.topological())}
    last = {}
    for node, _ in chosen:
        last[id(node.layer)] = max(last.get(id(node.layer), -1), order[node.id])
    ranked = sorted(last, key=last.get, reverse=True)
    kept = set(ranked[: math.ceil(fraction * len(ranked) - 1e-9)])
    return [(n, s) for n, s in chosen if id(n.layer) in kept]


def _warn_opaque(graph):
    """Warns about composite layers kept whole that hold activations."""
    names = {o.name for o in graph.opaque}
    hiding = {
        node.layer.name
        for node in graph.layer_nodes()
        if getattr(node.layer, "name", None) in names
        and any(_holds_activation(s) for s in keras_internals.sublayers(node.layer)[1:])
    }
    opaque = [o for o in graph.opaque if o.name in hiding]
    if opaque:
        listed = "; ".join(str(o) for o in opaque)
        warnings.warn(
            f"Kept {len(opaque)} composite layer(s) whole, their "
            f"activations not converted: {listed}.",
            stacklevel=3,
        )


# ---------------------------------------------------------------- converting
def _convert(graph, chosen, options, shared_axes):
    names = _names_book(
        graph, [n for n, _ in chosen if not is_fused_activation(n.layer)]
    )
    replacements, linear_clones = {}, {}
    for node, spec in chosen:
        source = node.layer
        fused = is_fused_activation(source)
        if id(source) not in replacements:
            base = f"{source.name}_{spec.kind}" if fused else _name(source)
            prefix = unrolled_prefix(node.scope)
            if prefix and not base.startswith(prefix + "_"):
                base = f"{prefix}_{base}"  # as to_model names the sublayers
            name = names.take(base)
            replacements[id(source)] = _collapsible_layer(
                source, spec, name, options, shared_axes
            )
        collapsible = replacements[id(source)]
        if fused:
            if id(source) not in linear_clones:
                linear_clones[id(source)] = _without_activation(source)
            _split(graph, node, linear_clones[id(source)], collapsible)
            continue
        weights = None
        if spec.alpha is not None:  # a PReLU's slope, stored over the scale
            stored = np.asarray(spec.alpha, "float32") / collapsible.alpha_scale
            weights = [stored, np.zeros((), "float32")]
        (ref,) = node.input_refs
        rewrite.set_layer(graph, node, collapsible, weights, args=(ref,))


def _collapsible_layer(source, spec, name, options, shared_axes):
    options = {**options, "name": name}
    if isinstance(source, keras.layers.Layer):
        options["dtype"] = source.dtype_policy
    if spec.alpha is not None:
        return CollapsiblePReLU(shared_axes=source.shared_axes, **options)
    if spec.name == "relu" and not spec.kwargs:
        return CollapsiblePReLU(shared_axes=shared_axes, **options)
    return CollapsibleActivation(
        spec.name, spec.kwargs, shared_axes=shared_axes, **options
    )


def _without_activation(layer):
    """A new layer like `layer`, same name, with `activation="linear"`.

    Its initializers, regularizers and constraints are `layer`'s own objects
    rather than their serialized configs, which a custom class not registered
    with Keras could not be re-created from.
    """
    config = {**layer.get_config(), "activation": "linear"}
    for key in config:
        value = getattr(layer, key, None)
        if isinstance(value, _SUB_OBJECTS):
            config[key] = value
    return type(layer).from_config(config)


def _split(graph, node, linear, collapsible):
    """Makes `node` call `linear` and inserts `collapsible` after it."""
    rewrite.set_layer(graph, node, linear, node.layer.get_weights())
    rewrite.insert_after(graph, node, collapsible)


def _names_book(graph, replaced):
    """Unique operation names: every name but those of the layers
    `replaced` (their replacements take them over) is taken."""
    gone = {id(n.layer) for n in replaced}
    return Names(_name(n.layer) for n in graph.layer_nodes() if id(n.layer) not in gone)


def _names(node):
    """The names `layer_names` may give a node's layer: its own and, inside
    an unrolled composite layer, the prefixed one the new model gives it."""
    own = _name(node.layer)
    prefix = unrolled_prefix(node.scope)
    return {own, f"{prefix}_{own}"} if prefix else {own}


def _name(layer):
    return getattr(layer, "name", type(layer).__name__)
