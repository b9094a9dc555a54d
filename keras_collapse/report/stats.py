"""Depth, activations, parameters and MACs of a Keras model.

The numbers a surgery promises to shrink, read from `Graph.from_model` (nested
models inlined) so that a model before and after surgery is measured alike.

What is counted, and why:

- **depth**, the *real depth*: the longest input-to-output path counted in
  weight layers. A layer weighs 1 if it owns a kernel (a weight of rank >= 2
  named `kernel` or `*_kernel`): Conv, ConvTranspose, DepthwiseConv, Dense,
  EinsumDense, recurrent layers, MultiHeadAttention. `SeparableConv` weighs 2:
  it is a depthwise then a pointwise conv, the pair a surgery may merge into
  one. Everything else weighs 0: BatchNormalization (it folds into a
  neighbour), activations, pooling, Embedding (a table lookup, no arithmetic).
  A custom layer hiding several weight layers is one node and weighs 1.
- **activations**: nonlinear activations *applied*, so a shared layer called
  twice counts twice. Counted: activation layers (ReLU, LeakyReLU, PReLU, ELU,
  Softmax), `Activation` layers, raw `keras.ops` activations (softmax
  included), collapsible activations that are not linear yet, and activations
  fused into a layer (`Conv2D(..., activation="relu")`). Linear ones
  (`"linear"`, a locked or alpha = 1 collapsible layer) do not count.
- **params**: `model.count_params()` semantics (every weight, trainable or
  not), each layer once however often it is called.
- **macs**: multiply-accumulates for one sample. Conv, ConvTranspose,
  DepthwiseConv, SeparableConv and Dense are counted from their kernels and
  the node shapes; BatchNormalization counts 0 because it folds away at
  inference, and so do elementwise ops and pooling. Other kernel-owning layers
  (EinsumDense, MultiHeadAttention, recurrent layers) are not counted, and a
  note says so.

Unknown axes (None, other than the batch axis) are taken from `input_shape`;
without it each unknown input axis is assumed to be 32, and a note says so.
"""

import dataclasses
import math

import keras

from keras_collapse.algebra import attention_macs
from keras_collapse.algebra import conv_macs
from keras_collapse.algebra import dense_macs
from keras_collapse.algebra import einsum_macs
from keras_collapse.checks import is_int
from keras_collapse.graph import kinds
from keras_collapse.graph.ir import Graph
from keras_collapse.graph.ir import Ref
from keras_collapse.graph.random_arrays import NOMINAL_SIZE

_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_TRANSPOSED = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_ACTIVATION_LAYERS = (
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
)
# Raw ops that are nonlinear but not elementwise, so absent from OP_ACTIVATIONS.
_OTHER_OP_ACTIVATIONS = ("Softmax", "LogSoftmax")


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """Size and depth of a model, as counted by `model_stats`.

    Attributes:
        depth: int. Weight layers on the longest input-to-output path.
        activations: int. Nonlinear activations applied in one forward pass.
        params: int. Number of weights (trainable or not), shared ones once.
        macs: int. Multiply-accumulates for one sample.
        layers: int. Number of layer (and raw op) nodes.
        notes: tuple of str. What was assumed or left uncounted.
        linearized: int. Collapsible activations that compute the identity
            (locked, or at alpha = 1): linear, so not in `activations`, but
            still layers until `surgery` removes them.
    """

    depth: int
    activations: int
    params: int
    macs: int
    layers: int
    notes: tuple = ()
    linearized: int = 0

    def as_dict(self):
        """Returns the fields as a dict of plain ints (notes as a list)."""
        fields = dataclasses.asdict(self)
        fields["notes"] = list(self.notes)
        return fields


def model_stats(model, input_shape=None):
    """Counts depth, activations, parameters and MACs of a Keras model.

    See the module docstring for exactly what each number counts.

    Args:
        model: keras.Model. A Functional or Sequential model (nested models
            are inlined). It is not modified.
        input_shape: tuple, or list of tuples, or None. Input shape without
            the batch axis, one per model input, used where the model leaves
            an axis unknown (None). Defaults to None: unknown axes are assumed
            to be 32, with a note.

    Returns:
        ModelStats.

    Raises:
        ValueError: if `model` is not a Functional or Sequential model, or
            `input_shape` does not fit the model's inputs.

    Example:

    >>> inputs = keras.Input((8, 8, 16))
    >>> x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    >>> stats = kc.model_stats(keras.Model(inputs, x))
    >>> stats.macs  # 3 * 3 taps * 16 in * 32 out * 8 * 8 positions
    294912
    >>> stats.depth, stats.activations, stats.params  # params: 9*16*32 + 32
    (1, 1, 4640)
    """
    graph = Graph.from_model(model)
    notes = []
    shapes = _tensor_shapes(graph, input_shape, notes)
    nodes = graph.layer_nodes()
    macs = sum(_node_macs(node, shapes, notes) for node in nodes)
    own = _collapsible_params(nodes)
    if own:
        notes.append(
            f"Parameters include {own:,} slope and lock value(s) of collapsible "
            "activations, which the model did not have before make_collapsible "
            "and the surgery removes."
        )
    return ModelStats(
        depth=_real_depth(graph),
        activations=sum(_applies_activation(node.layer) for node in nodes),
        params=_param_count(graph),
        macs=int(macs),
        layers=len(nodes),
        notes=tuple(dict.fromkeys(notes)),
        linearized=sum(
            kinds.is_collapsible(node.layer) and node.layer.is_linear for node in nodes
        ),
    )


# ---------------------------------------------------------------------- depth
def _depth_weight(layer):
    """Weight layers a layer stands for on a path: 0, 1, or 2 (separable)."""
    if isinstance(layer, _SEPARABLE):
        return 2
    return int(_has_kernel(layer))


def _has_kernel(layer):
    return any(
        len(w.shape) >= 2 and (w.name == "kernel" or w.name.endswith("_kernel"))
        for w in getattr(layer, "weights", ())
    )


def _real_depth(graph):
    depth = {}
    for node in graph.topological():
        below = max((depth[ref.node] for ref in node.input_refs), default=0)
        depth[node.id] = below + (0 if node.is_input else _depth_weight(node.layer))
    return max(depth[ref.node] for ref in keras.tree.flatten(graph.outputs))


# ---------------------------------------------------------------- activations
def _applies_activation(layer):
    """Whether calling `layer` applies a nonlinear activation."""
    if kinds.is_collapsible(layer):
        return not layer.is_linear
    if isinstance(layer, _ACTIVATION_LAYERS):
        return True
    if not isinstance(layer, keras.layers.Layer):
        name = type(layer).__name__
        return name in kinds.OP_ACTIVATIONS or name in _OTHER_OP_ACTIVATIONS
    # `Activation` layers and activations fused into Conv/Dense/... layers.
    activation = getattr(layer, "activation", None)
    return callable(activation) and kinds.activation_name(activation) != "linear"


# --------------------------------------------------------------------- params
def _collapsible_params(nodes):
    """Values held by the collapsible activations' own weights, once each."""
    variables = {}
    for node in nodes:
        if kinds.is_collapsible(node.layer):
            for variable in getattr(node.layer, "weights", ()):
                variables[id(variable)] = variable
    return int(sum(math.prod(v.shape) for v in variables.values()))


def _param_count(graph):
    variables = {}
    for node in graph.nodes.values():
        for variable in getattr(node.layer, "weights", ()):
            variables[id(variable)] = variable
    return int(sum(math.prod(v.shape) for v in variables.values()))


# ----------------------------------------------------------------------- MACs
def _node_macs(node, shapes, notes):
    layer = node.layer
    if isinstance(layer, _SEPARABLE):
        positions = _spatial(layer, shapes[Ref(node.id)], notes)
        return conv_macs(layer.depthwise_kernel.shape, positions) + conv_macs(
            layer.pointwise_kernel.shape, positions
        )
    if isinstance(layer, _CONVS + kinds.DEPTHWISE_TYPES):
        positions = _spatial(layer, shapes[Ref(node.id)], notes)
        return conv_macs(layer.kernel.shape, positions)
    if isinstance(layer, _TRANSPOSED):
        # Every input position scatters the whole kernel.
        source = shapes[node.input_refs[0]]
        return conv_macs(layer.kernel.shape, _spatial(layer, source, notes))
    if isinstance(layer, keras.layers.Dense):
        positions = _known(shapes[Ref(node.id)][1:-1], layer, notes)
        # From the shapes, not the kernel, which int4 quantization packs.
        features = shapes[node.input_refs[0]][-1]
        return dense_macs((features, layer.units), math.prod(positions))
    if isinstance(layer, keras.layers.EinsumDense):
        out = shapes[Ref(node.id)][1:]
        return einsum_macs(
            layer.equation, layer.kernel.shape, _known(out, layer, notes)
        )
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return _attention_macs(node, shapes, notes)
    if _has_kernel(layer):
        notes.append(
            f"MACs of layer '{layer.name}' ({type(layer).__name__}) are not "
            "counted: no rule for this layer type."
        )
    return 0


def _attention_macs(node, shapes, notes):
    layer = node.layer
    named = dict(zip(("query", "value", "key"), node.args))
    named.update(
        {k: v for k, v in node.kwargs.items() if k in ("query", "value", "key")}
    )
    named.setdefault("key", named.get("value"))

    def shape(name):
        return _known(shapes[named[name]][1:], layer, notes)

    query = shape("query")
    output = _known(shapes[Ref(node.id)][1:], layer, notes)
    return attention_macs(
        query,
        shape("value"),
        shape("key"),
        layer.num_heads,
        layer.key_dim,
        layer.value_dim or layer.key_dim,
        output[-1],
    )


def _spatial(layer, shape, notes):
    """The spatial axes of a conv input or output shape (batch included)."""
    spatial = shape[2:] if layer.data_format == "channels_first" else shape[1:-1]
    return _known(spatial, layer, notes)


def _known(dims, layer, notes):
    if all(d is not None for d in dims):
        return tuple(dims)
    notes.append(
        f"Layer '{layer.name}' has unknown axes {tuple(dims)}: assumed "
        f"{NOMINAL_SIZE} each for its MACs."
    )
    return tuple(NOMINAL_SIZE if d is None else d for d in dims)


# --------------------------------------------------------------------- shapes
def resolve_input_shapes(declared, input_shape):
    """Fills the unknown axes of a model's input shapes from `input_shape`.

    Args:
        declared: list of tuples. Each input's shape, batch axis included.
        input_shape: tuple, or list of tuples (one per input), or None.
            Shapes without the batch axis.

    Returns:
        List of tuples, batch axis included; axes still unknown stay None.

    Raises:
        ValueError: if `input_shape` is malformed, has the wrong number of
            shapes or ranks, or contradicts an axis the model fixes.
    """
    if input_shape is None:
        return [tuple(shape) for shape in declared]
    given = _split_shapes(input_shape, len(declared))
    resolved = []
    for shape, wanted in zip(declared, given, strict=True):
        if len(wanted) != len(shape) - 1 or any(
            d is not None and w is not None and d != w
            for d, w in zip(shape[1:], wanted, strict=True)
        ):
            raise ValueError(
                f"`input_shape` {tuple(wanted)} does not fit the model input of "
                f"shape {tuple(shape)}: expected the shape without the batch "
                "axis, with the same rank and the same sizes where the model "
                f"fixes them. Received: input_shape={input_shape!r}"
            )
        filled = (
            d if d is not None else w for d, w in zip(shape[1:], wanted, strict=True)
        )
        resolved.append((shape[0], *filled))
    return resolved


def _is_shape(value):
    return isinstance(value, (tuple, list)) and all(
        d is None or (is_int(d) and d > 0) for d in value
    )


def _split_shapes(input_shape, count):
    if _is_shape(input_shape):
        shapes = [tuple(input_shape)]
    elif isinstance(input_shape, (tuple, list)) and all(
        _is_shape(s) for s in input_shape
    ):
        shapes = [tuple(s) for s in input_shape]
    else:
        raise ValueError(
            "`input_shape` must be a shape without the batch axis (a tuple of "
            "positive ints or None), or a list of such shapes, one per model "
            f"input. Received: input_shape={input_shape!r}"
        )
    if len(shapes) != count:
        raise ValueError(
            f"The model has {count} inputs; `input_shape` must give one shape "
            f"per input. Received {len(shapes)}: input_shape={input_shape!r}"
        )
    return [tuple(None if d is None else int(d) for d in s) for s in shapes]


def _tensor_shapes(graph, input_shape, notes):
    """Returns `{Ref: shape}` for every node output, batch axis included.

    The shapes read from the model are used as they are when every input
    axis is known; otherwise they are inferred again, node by node, from the
    input shapes filled in from `input_shape` (or 32).
    """
    inputs = [graph.producer(ref) for ref in keras.tree.flatten(graph.inputs)]
    declared = [node.shape for node in inputs]
    probe = resolve_input_shapes(declared, input_shape)
    recorded = {
        Ref(node.id, i): tuple(shape)
        for node in graph.nodes.values()
        for i, shape in enumerate(node.shapes)
    }
    if all(None not in shape[1:] for shape in declared):
        return recorded
    specs, assumed = {}, []
    for node, shape in zip(inputs, probe, strict=True):
        if None in shape[1:]:
            shape = (shape[0], *(d or NOMINAL_SIZE for d in shape[1:]))
            assumed.append(
                f"'{node.input_config['name']}' {tuple(node.shape)} -> {shape}"
            )
        specs[Ref(node.id)] = keras.KerasTensor(shape, dtype=node.dtypes[0])
    if assumed:  # one note for every input
        which = "Input" if len(assumed) == 1 else f"{len(assumed)} inputs"
        notes.append(
            f"{which} with unknown axes, assumed {NOMINAL_SIZE} each: "
            f"{', '.join(assumed)}. Pass `input_shape` to set them."
        )
    for node in graph.layer_nodes():
        for i, spec in enumerate(_output_specs(node, specs, notes)):
            specs[Ref(node.id, i)] = spec
    recorded.update({ref: tuple(spec.shape) for ref, spec in specs.items()})
    return recorded


def _output_specs(node, specs, notes):
    def fill(x):
        return specs[x] if isinstance(x, Ref) else x

    args = keras.tree.map_structure(fill, node.args)
    kwargs = keras.tree.map_structure(fill, node.kwargs)
    try:
        return keras.tree.flatten(node.layer.compute_output_spec(*args, **kwargs))
    except Exception as e:  # any custom layer may fail to infer; keep going
        name = getattr(node.layer, "name", type(node.layer).__name__)
        notes.append(
            f"Could not infer the output shape of '{name}' for the given input "
            f"shape ({type(e).__name__}: {e}); used the model's own shape."
        )
        return [
            keras.KerasTensor(shape, dtype=dtype)
            for shape, dtype in zip(node.shapes, node.dtypes, strict=True)
        ]
