"""A flat, editable graph of a Keras model, and its rebuilding into a model.

`Graph.from_model` reads a Functional or Sequential model, inlining nested
models and unrolling composite layers (`unroll`), into nodes that hold a
layer (or a raw Keras operation) and call
arguments whose tensors are `Ref`s to other nodes' outputs. Passes edit the
graph through `graph.rewrite` (a node's layer, its inputs, its removal) and
`add` / `bypass` / `replace_uses` here. `Graph.to_model`
builds a new, independent Keras model: every layer of the input model is
cloned (shared layers stay shared), so the input model is never modified.
"""

import dataclasses
import itertools

import keras
import numpy as np

from keras_collapse.graph import keras_internals
from keras_collapse.graph import unroll
from keras_collapse.graph.clone import clone_layer
from keras_collapse.graph.clone import renamed
from keras_collapse.graph.names import Names


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
    # Names of the nested models and unrolled composite layers (`Unrolled`)
    # the layer came from, outermost first.
    scope: tuple = ()
    output_name: str | None = None  # set by `to_model` for a model output

    @property
    def is_input(self):
        return self.input_config is not None

    @property
    def input_refs(self):
        if not self.kwargs and all(isinstance(x, Ref) for x in self.args):
            return list(self.args)  # the common case, without a tree walk
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


class Unrolled(str):
    """The name of an unrolled composite layer, in a node's scope."""


def unrolled_prefix(scope):
    """The names of the unrolled composite layers in `scope`, outermost
    first, joined by "_" ("encoder_block_0_mlp"), or None: sublayers of
    nested composite layers keep one pattern in every block."""
    names = [str(name) for name in scope if isinstance(name, Unrolled)]
    return "_".join(names) or None


def _is_tensor(x):
    return isinstance(x, keras.KerasTensor)


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
        # What the model shows outside, kept by `to_model`: the names and
        # dtypes of its flat outputs (`compile(loss={name: ...})` uses names).
        self.output_names = None
        self.output_dtypes = None
        self._unroll = True
        # Composite layers kept whole (`unroll.Opaque`), for reports.
        self.opaque = []

    # ----------------------------------------------------------------- reading
    @classmethod
    def from_model(cls, model, unroll=True):
        """Reads `model` (nested models inlined, composite layers unrolled
        unless `unroll=False`) without modifying its weights."""
        functional = keras_internals.functional_of(model)
        graph = cls(name=model.name)
        graph._unroll = unroll
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
        flat_outputs = keras.tree.flatten(keras_internals.output_structure(functional))
        names = list(getattr(functional, "output_names", None) or [])
        graph.output_names = names if len(names) == len(flat_outputs) else None
        graph.output_dtypes = [t.dtype for t in flat_outputs]
        return graph

    def _inline(self, functional, input_refs, scope=()):
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
            original = (args, kwargs) if self._unroll else None
            args = keras.tree.map_structure(to_ref, args)
            kwargs = keras.tree.map_structure(to_ref, kwargs)
            unrolled = unroll.trace(operation, *original) if original else None
            if unrolled is not None and unrolled.opaque is not None:
                self.opaque.append(unrolled.opaque)
            if isinstance(operation, keras.Model):
                nested = keras_internals.functional_of(operation)
                flat_in = [x for x in keras.tree.flatten((args, kwargs)) if _is_ref(x)]
                produced = keras.tree.flatten(
                    self._inline(nested, flat_in, scope + (operation.name,))
                )
            elif unrolled is not None and unrolled.functional is not None:
                # The subgraph's inputs: the call's distinct tensors, in order.
                flat = keras.tree.flatten(original)
                firsts = dict.fromkeys(id(x) for x in flat if _is_tensor(x))
                flat_in = [refs_by_tensor[i] for i in firsts]
                produced = keras.tree.flatten(
                    self._inline(
                        unrolled.functional,
                        flat_in,
                        scope + (Unrolled(operation.name),),
                    )
                )
            else:
                self._original_layer_ids.add(id(operation))
                node = self.add(
                    operation,
                    args,
                    kwargs,
                    shapes=[tuple(t.shape) for t in outputs],
                    dtypes=[t.dtype for t in outputs],
                    scope=scope,
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
    def copy(self):
        """A copy whose nodes can be edited without changing this graph.

        Layers and weight arrays are shared: passes put new layers and new
        arrays into nodes, they never change a layer or an array in place.
        """
        new = Graph(self.name)
        new.__dict__.update(self.__dict__)
        new.nodes = {
            i: dataclasses.replace(
                n,
                kwargs=dict(n.kwargs),
                shapes=list(n.shapes),
                dtypes=list(n.dtypes),
                weights=None if n.weights is None else list(n.weights),
            )
            for i, n in self.nodes.items()
        }
        start = max(self.nodes, default=-1) + 1
        new._ids = itertools.count(start)
        new._original_layer_ids = set(self._original_layer_ids)
        new._finite = dict(self._finite)
        new.opaque = list(self.opaque)
        return new

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
            return all(self._finite_array(w) for w in node.weights)
        layer = node.layer
        if not isinstance(layer, keras.layers.Layer):
            return True
        if id(layer) not in self._finite:
            self._finite[id(layer)] = all(
                np.all(np.isfinite(w)) for w in layer.get_weights()
            )
        return self._finite[id(layer)]

    def _finite_array(self, array):
        # Keyed by id, with the array held so that its id is not reused.
        key = ("array", id(array))
        if key not in self._finite:
            self._finite[key] = (array, bool(np.all(np.isfinite(array))))
        return self._finite[key][1]

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
    def to_model(self, name=None, *, dtype=None, keep_outputs=True):
        """Builds a new Keras model from the graph.

        Layers of the input model are cloned from their configs and receive a
        copy of their weights; layers created by passes are used as they are,
        with `node.weights` set once built. Layer names stay unique (two
        nested models may both hold a layer "c": the second becomes
        "<nested model>_c"), and the outputs keep the names and dtypes the
        input model gave them (`_keep_outputs`).

        Args:
            name: str, the model's name. Defaults to the graph's.
            dtype: a dtype policy name for every layer of the input model
                (e.g. "float32": a full-precision copy of a mixed-precision
                model). Defaults to `None`, each layer's own.
            keep_outputs: bool, whether outputs keep their names and dtypes.
        """
        self.prune()
        if keep_outputs:
            self._keep_outputs()
        tensors, clones, pending = {}, {}, []
        names = Names(reserved={n.output_name for n in self.nodes.values()})
        for node in self.nodes.values():
            if node.is_input:
                tensors[Ref(node.id)] = keras.Input(**node.input_config)
                names.take(node.input_config["name"])
        for node in self.layer_nodes():
            layer = self._materialize(node, clones, pending, names, dtype)

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

    def _keep_outputs(self):
        """Gives each output the name and dtype the input model gave it.

        A pass may leave another layer at an output (an identity dropped, a
        merge, a cast removed): that layer takes the output's name when it
        feeds that output only; otherwise a linear `Activation` carrying the
        name and dtype is put at the output (a cast when the dtype differs).
        """
        if self.output_names is None:
            return
        flat = keras.tree.flatten(self.outputs)
        wanted = list(zip(flat, self.output_names, self.output_dtypes))
        readers = self.consumers()
        new_flat = []
        for ref, name, dtype in wanted:
            node = self.producer(ref)
            current = getattr(node.layer, "name", None)
            same_dtype = keras.backend.standardize_dtype(
                node.dtypes[ref.index]
            ) == keras.backend.standardize_dtype(dtype)
            if current == name and same_dtype:
                new_flat.append(ref)
                continue
            sole = (
                not node.is_input
                and isinstance(node.layer, keras.layers.Layer)
                and len(node.shapes) == 1
                and readers.get(ref) == [None]
                and sum(r == ref for r in flat) == 1
                and sum(n.layer is node.layer for n in self.nodes.values()) == 1
            )
            if same_dtype and sole:
                node.output_name = name
                new_flat.append(ref)
                continue
            guard = self.add(
                keras.layers.Activation("linear", dtype=dtype, name=name),
                (ref,),
                shapes=[node.shapes[ref.index]],
                dtypes=[dtype],
                output_name=name,
            )
            new_flat.append(Ref(guard.id))
        self.outputs = keras.tree.pack_sequence_as(self.outputs, new_flat)

    def _materialize(self, node, clones, pending, names, dtype=None):
        layer = node.layer
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless operation
        if id(layer) in clones:
            return clones[id(layer)]
        name = _take_name(names, node.output_name or layer.name, node)
        if not self.is_original(layer):  # created by a pass
            clones[id(layer)] = layer if name == layer.name else renamed(layer, name)
        else:
            clones[id(layer)] = clone_layer(layer, name, dtype)
            if node.weights is None and layer.weights:
                pending.append((clones[id(layer)], layer.get_weights()))
        return clones[id(layer)]


def _take_name(names, name, node):
    """A layer's own name, else "<nested model>_<name>"; a sublayer of an
    unrolled composite layer is named after it first
    ("transformer_layer_0_feedforward_output_dense"), in every block."""
    candidates = [f"{s}_{name}" for s in reversed(node.scope)]
    prefix = unrolled_prefix(node.scope)
    if prefix and not name.startswith(prefix + "_"):
        name, candidates = f"{prefix}_{name}", [name, *candidates]
    return names.take(name, candidates, owner=node.output_name)
