"""A model that runs another model's own layers and returns what flows
inside it: the tensors at chosen places of its graph, reduced on the way.

It runs the flat `Graph` (nested models inlined) by calling the original
layers in `call()`, so no symbolic call adds nodes to them and nothing of
the input model changes; it has no variables of its own (it tracks the
original layers'), and `predict_on_batch` compiles it on every backend.
Only the nodes the taps depend on run.
"""

import inspect

import keras

from keras_collapse.graph.ir import Ref


class ProbeModel(keras.Model):
    """Outputs `reduce(tensor)` for each tapped tensor of `graph`.

    Args:
        graph: a `Graph` read from the model (`Graph.from_model`).
        taps: list of `Ref`, the tensors to return.
        reducers: list of layers / callables, one per tap, applied to the
            tapped tensor inside the compiled function (so only their
            small result leaves it). None returns the tensor itself.
        training: bool, the mode the layers run in. Defaults to `False`.
    """

    def __init__(self, graph, taps, reducers=None, training=False, **kwargs):
        super().__init__(**kwargs)
        self._graph = graph
        self._taps = list(taps)
        self._reducers = list(reducers or [None] * len(self._taps))
        self._training = bool(training)
        needed = _ancestors(graph, {r.node for r in self._taps})
        self._order = [n for n in graph.topological() if n.id in needed]
        # Tracked, so their variables are this model's (JAX passes them in).
        self._probed_layers = _unique(
            n.layer for n in self._order if isinstance(n.layer, keras.layers.Layer)
        )
        self._reducer_layers = [
            r for r in self._reducers if isinstance(r, keras.layers.Layer)
        ]
        self._input_refs = keras.tree.flatten(graph.inputs)
        self.built = True

    def call(self, inputs):
        values = dict(zip(self._input_refs, keras.tree.flatten(inputs)))

        def fill(x):
            return values[x] if isinstance(x, Ref) else x

        for node in self._order:
            if node.is_input:
                continue
            kwargs = keras.tree.map_structure(fill, node.kwargs)
            if "training" not in kwargs and _takes_training(node.layer):
                kwargs["training"] = self._training
            out = node.layer(*keras.tree.map_structure(fill, node.args), **kwargs)
            for i, tensor in enumerate(keras.tree.flatten(out)):
                values[Ref(node.id, i)] = tensor
        return [
            values[ref] if reduce is None else reduce(values[ref])
            for ref, reduce in zip(self._taps, self._reducers)
        ]


def _takes_training(layer):
    call = getattr(layer, "call", None)
    if call is None:
        return False
    try:
        return "training" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


def _ancestors(graph, start):
    found, stack = set(), list(start)
    while stack:
        node_id = stack.pop()
        if node_id in found:
            continue
        found.add(node_id)
        stack.extend(r.node for r in graph.nodes[node_id].input_refs)
    return found


def _unique(layers):
    seen, out = set(), []
    for layer in layers:
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out
