"""The only module that reads Keras' private graph structures.

Keras 3 has no public API to walk the nodes of a functional graph with their
call arguments; `keras.models.clone_model` rebuilds a graph but cannot merge
two layers into one. What is read here (pinned by tests/graph/test_ir.py):
`Functional._nodes_by_depth`, `_inputs_struct`, `_outputs_struct`,
`Layer._flatten_layers`,
`Sequential._functional`, `Node.operation / arguments / outputs / is_input`,
`Lambda._output_shape`, the current call context (`global_state`'s
"current_call_ctx", `CallContext`), and `Metric._direction` (as
`MonitorCallback` reads it).
"""

import contextlib

import keras


def functional_of(model):
    """Returns the functional graph behind `model`, or raises a helpful error."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected a keras.Model. Received: {model!r} of type "
            f"{type(model).__name__}"
        )
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(
                f"Sequential model '{model.name}' has no known input shape, so its "
                "graph does not exist yet. Start it with `keras.Input(shape)` or "
                "call `model.build(input_shape)` first."
            )
        return functional
    if not hasattr(model, "_nodes_by_depth") or not hasattr(model, "_inputs_struct"):
        raise ValueError(
            f"Model '{model.name}' of class {type(model).__name__} is a subclassed "
            "model: its layers are wired by Python code in `call()`, which cannot "
            "be read or rebuilt. Build it with the functional API "
            "(`keras.Model(inputs, outputs)`) or `keras.Sequential` instead, "
            "e.g. by calling its layers on `keras.Input` tensors."
        )
    return model


def graph_nodes(functional):
    """Yields `(operation, args, kwargs, outputs)` for each non-input node,
    in an order where every node comes after the nodes it reads from."""
    by_depth = functional._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            yield (
                node.operation,
                node.arguments.args,
                node.arguments.kwargs,
                node.outputs,
            )


def input_structure(functional):
    return functional._inputs_struct


def output_structure(functional):
    return functional._outputs_struct


def sublayers(operation):
    """`operation` and every layer it holds (keras-hub composite layers keep
    their `Embedding`s inside), or `[]` for a raw operation."""
    if not isinstance(operation, keras.layers.Layer):
        return []
    return list(operation._flatten_layers(include_self=True, recursive=True))


def lambda_output_shape(layer):
    """The `output_shape` a `keras.layers.Lambda` was given (None, a tuple or
    a callable): its config holds a callable only as bytecode."""
    return layer._output_shape


@contextlib.contextmanager
def training_context(mode):
    """Runs the block as inside a layer called with `training=mode`: each
    layer called in it that is not given `training` takes `mode` (or what a
    sibling before it was given explicitly), as in an eager call of a
    composite layer. Without it, a layer called alone takes its own default."""
    from keras.src.backend.common import global_state
    from keras.src.layers.layer import CallContext

    previous = global_state.get_global_attribute("current_call_ctx")
    context = CallContext(entry_layer=None)
    context.set_value("training", mode)
    global_state.set_global_attribute("current_call_ctx", context)
    try:
        yield
    finally:
        global_state.set_global_attribute("current_call_ctx", previous)


def metric_direction(model, name):
    """ "up" or "down" for the compiled metric of `model` named `name` (its
    private `_direction`, what Keras' `MonitorCallback` reads), or None when
    no compiled metric of that name says."""
    found = []
    for metric in getattr(model, "metrics", None) or []:
        found.append(metric)
        found.extend(getattr(metric, "metrics", None) or [])  # CompileMetrics
    for metric in found:
        if getattr(metric, "name", None) == name:
            direction = getattr(metric, "_direction", None)
            if direction in ("up", "down"):
                return direction
    return None
