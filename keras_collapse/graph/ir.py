"""A flat, editable graph of a Keras model, and its rebuilding into a model.

`Graph.from_model` reads a Functional or Sequential model, inlining nested
models, into nodes that hold a layer (or a raw Keras operation) and call
arguments whose tensors are `Ref`s to other nodes' outputs. Passes edit the
graph: replace a node's layer, rewire uses, drop nodes. `Graph.to_model`
builds a new, independent Keras model: every layer of the input model is
cloned (shared layers stay shared), so the input model is never modified.
"""

import dataclasses
import itertools
import warnings

import keras
import numpy as np

from keras_collapse.graph import keras_internals


@dataclasses.dataclass(frozen=True)
class Ref:
    """One output tensor of a node: `index` into the node's flat outputs."""

    node: int
    index: int = 0


@dataclasses.dataclass
class Node:
    """A call of `layer` on arguments whose tensors are `Ref`s.

    `weights` is None to keep the layer's own weights, or the list of NumPy
    arrays to set on a layer created by a pass. `shapes`/`dtypes` describe
    the outputs (batch axis included, None where unknown).
    """

    id: int
    layer: object
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    shapes: list = dataclasses.field(default_factory=list)
    dtypes: list = dataclasses.field(default_factory=list)
    weights: list | None = None
    input_config: dict | None = None  # for graph inputs only

    @property
    def is_input(self):
        return self.input_config is not None

    @property
    def input_refs(self):
        return [
            x
            for x in keras.tree.flatten((self.args, self.kwargs))
            if isinstance(x, Ref)
        ]

    @property
    def shape(self):
        """The shape of the node's single output."""
        return self.shapes[0]

    def __repr__(self):
        name = getattr(self.layer, "name", type(self.layer).__name__)
        return f"Node({self.id}, {name})"


def _is_ref(x):
    return isinstance(x, Ref)


class Graph:
    """An editable dataflow graph of Keras layers and operations."""

    def __init__(self, name="model"):
        self.name = name
        self.nodes = {}
        self.inputs = None  # structure of Refs
        self.outputs = None  # structure of Refs
        self._ids = itertools.count()
        self._original_layer_ids = set()
        self._finite = {}  # id(layer) -> whether its own weights are finite

    # ----------------------------------------------------------------- reading
    @classmethod
    def from_model(cls, model):
        """Reads `model` (nested models inlined) without modifying it."""
        functional = keras_internals.functional_of(model)
        graph = cls(name=model.name)
        input_tensors = keras.tree.flatten(keras_internals.input_structure(functional))
        refs = []
        for tensor in input_tensors:
            node = graph.add(
                layer=None,
                shapes=[tuple(tensor.shape)],
                dtypes=[tensor.dtype],
                input_config={
                    "batch_shape": tuple(tensor.shape),
                    "dtype": tensor.dtype,
                    "sparse": bool(getattr(tensor, "sparse", False)),
                    "name": tensor.name,
                },
            )
            refs.append(Ref(node.id))
        graph.inputs = keras.tree.pack_sequence_as(
            keras_internals.input_structure(functional), refs
        )
        graph.outputs = graph._inline(functional, refs)
        graph._refine_shapes()
        return graph

    def _inline(self, functional, input_refs):
        """Adds the nodes of `functional`, fed by `input_refs`; returns its
        output structure as Refs."""
        refs_by_tensor = {}
        inputs = keras.tree.flatten(keras_internals.input_structure(functional))
        for tensor, ref in zip(inputs, input_refs):
            refs_by_tensor[id(tensor)] = ref

        def to_ref(x):
            if isinstance(x, keras.KerasTensor):
                return refs_by_tensor[id(x)]
            return x

        for operation, args, kwargs, outputs in keras_internals.graph_nodes(functional):
            args = keras.tree.map_structure(to_ref, args)
            kwargs = keras.tree.map_structure(to_ref, kwargs)
            if isinstance(operation, keras.Model):
                nested = keras_internals.functional_of(operation)
                flat_in = [x for x in keras.tree.flatten((args, kwargs)) if _is_ref(x)]
                produced = keras.tree.flatten(self._inline(nested, flat_in))
            else:
                self._original_layer_ids.add(id(operation))
                node = self.add(
                    operation,
                    args,
                    kwargs,
                    shapes=[tuple(t.shape) for t in outputs],
                    dtypes=[t.dtype for t in outputs],
                )
                produced = [Ref(node.id, i) for i in range(len(outputs))]
            for tensor, ref in zip(outputs, produced):
                refs_by_tensor[id(tensor)] = ref
        return keras.tree.map_structure(
            to_ref, keras_internals.output_structure(functional)
        )

    def _refine_shapes(self):
        """Re-derives unknown sizes from the producers' shapes. A nested model
        built for any image size has unknown sizes inside even where the
        outer model calls it on a fixed size."""
        specs = {}
        for node in self.topological():
            if node.is_input or all(
                d is not None for shape in node.shapes for d in shape[1:]
            ):
                specs.update(
                    (Ref(node.id, i), keras.KerasTensor(shape, dtype))
                    for i, (shape, dtype) in enumerate(zip(node.shapes, node.dtypes))
                )
                continue
            try:
                out = node.layer.compute_output_spec(
                    *keras.tree.map_structure(lambda x: specs.get(x, x), node.args),
                    **keras.tree.map_structure(lambda x: specs.get(x, x), node.kwargs),
                )
            except Exception:  # keep what the model said; sizes stay unknown
                out = [
                    keras.KerasTensor(shape, dtype)
                    for shape, dtype in zip(node.shapes, node.dtypes)
                ]
            out = keras.tree.flatten(out)
            node.shapes = [tuple(t.shape) for t in out]
            specs.update((Ref(node.id, i), t) for i, t in enumerate(out))

    # ----------------------------------------------------------------- editing
    def add(self, layer, args=(), kwargs=None, shapes=None, dtypes=None, **fields):
        """Adds a node; returns it."""
        node = Node(
            id=next(self._ids),
            layer=layer,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            shapes=list(shapes or []),
            dtypes=list(dtypes or []),
            **fields,
        )
        self.nodes[node.id] = node
        return node

    def is_original(self, layer):
        """Whether `layer` belongs to the model the graph was read from."""
        return id(layer) in self._original_layer_ids

    def has_finite_weights(self, node):
        """Whether the weights a node computes with are all finite. Passes
        leave layers with NaN/inf weights alone: merging would spread them."""
        if node.weights is not None:
            return all(np.all(np.isfinite(w)) for w in node.weights)
        layer = node.layer
        if not isinstance(layer, keras.layers.Layer):
            return True
        if id(layer) not in self._finite:
            self._finite[id(layer)] = all(
                np.all(np.isfinite(w)) for w in layer.get_weights()
            )
        return self._finite[id(layer)]

    def replace_uses(self, old, new):
        """Makes every reader of Ref `old` (and the outputs) read `new`."""

        def swap(x):
            return new if _is_ref(x) and x == old else x

        for node in self.nodes.values():
            node.args = keras.tree.map_structure(swap, node.args)
            node.kwargs = keras.tree.map_structure(swap, node.kwargs)
        self.outputs = keras.tree.map_structure(swap, self.outputs)

    def bypass(self, node):
        """Removes a single-input node, wiring its readers to its input."""
        (source,) = node.input_refs
        self.replace_uses(Ref(node.id), source)
        del self.nodes[node.id]

    def consumers(self):
        """Returns `{Ref: [node, ...]}`; a Ref read by a graph output also maps
        to `None` in its list."""
        readers = {}
        for node in self.nodes.values():
            for ref in node.input_refs:
                readers.setdefault(ref, []).append(node)
        for ref in keras.tree.flatten(self.outputs):
            readers.setdefault(ref, []).append(None)
        return readers

    def producer(self, ref):
        return self.nodes[ref.node]

    def layer_nodes(self):
        """Nodes that call a layer or operation (graph inputs excluded), in
        topological order."""
        return [n for n in self.topological() if not n.is_input]

    def topological(self):
        """The nodes the outputs depend on, each after the nodes it reads."""
        order, state = [], {}
        for start in [r.node for r in keras.tree.flatten(self.outputs)]:
            stack = [(start, False)]
            while stack:
                node_id, done = stack.pop()
                if done:
                    state[node_id] = 2
                    order.append(self.nodes[node_id])
                    continue
                if state.get(node_id):
                    continue
                state[node_id] = 1
                stack.append((node_id, True))
                for ref in reversed(self.nodes[node_id].input_refs):
                    if not state.get(ref.node):
                        stack.append((ref.node, False))
        return order

    def prune(self):
        """Drops nodes that no output depends on (graph inputs are kept)."""
        live = {n.id for n in self.topological()}
        for node_id in list(self.nodes):
            if node_id not in live and not self.nodes[node_id].is_input:
                del self.nodes[node_id]

    # ---------------------------------------------------------------- building
    def to_model(self, name=None):
        """Builds a new Keras model from the graph.

        Layers of the input model are cloned from their configs and receive a
        copy of their weights; layers created by passes are used as they are,
        with `node.weights` set once built.
        """
        self.prune()
        tensors, clones, pending = {}, {}, []
        for node in self.nodes.values():
            if node.is_input:
                tensors[Ref(node.id)] = keras.Input(**node.input_config)
        for node in self.layer_nodes():
            layer = self._materialize(node, clones, pending)

            def fill(x):
                return tensors[x] if _is_ref(x) else x

            out = layer(
                *keras.tree.map_structure(fill, node.args),
                **keras.tree.map_structure(fill, node.kwargs),
            )
            for i, tensor in enumerate(keras.tree.flatten(out)):
                tensors[Ref(node.id, i)] = tensor
            if node.weights is not None:
                pending.append((layer, node.weights))
        inputs = keras.tree.map_structure(lambda r: tensors[r], self.inputs)
        outputs = keras.tree.map_structure(lambda r: tensors[r], self.outputs)
        model = keras.Model(inputs, outputs, name=name or self.name)
        for layer, weights in pending:
            layer.set_weights([np.asarray(w) for w in weights])
        return model

    def _materialize(self, node, clones, pending):
        layer = node.layer
        if not self.is_original(layer) or not isinstance(layer, keras.layers.Layer):
            return layer  # created by a pass, or a stateless operation
        if id(layer) not in clones:
            clones[id(layer)] = _clone_layer(layer)
            if node.weights is None and layer.weights:
                pending.append((clones[id(layer)], layer.get_weights()))
        return clones[id(layer)]


def _clone_layer(layer):
    """A new layer with `layer`'s config (weights are set after building)."""
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception as e:  # a custom layer without a complete get_config
        warnings.warn(
            f"Layer '{layer.name}' ({type(layer).__name__}) could not be re-created "
            f"from its config ({type(e).__name__}: {e}); the result shares this "
            "layer, and its weights, with the input model. Give the layer a "
            "complete `get_config()` to avoid this.",
            stacklevel=3,
        )
        return layer
