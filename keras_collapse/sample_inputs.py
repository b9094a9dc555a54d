"""Inputs to run a model on for verification: the user's, or random ones that
fit the model (integer ids within every `Embedding`, padding masks, a fixed
batch size, unknown sizes filled in)."""

import keras
import numpy as np

from keras_collapse import data as data_lib
from keras_collapse.graph import Graph
from keras_collapse.graph import keras_internals

NOMINAL_SIZE = 32
# Unknown sizes of an id input (a sequence length): short, so that position
# embeddings built for short sequences still fit.
NOMINAL_SEQUENCE = 8
# Ids drawn for an integer input that reaches no layer with a known range.
DEFAULT_ID_RANGE = 8
# Attributes that bound the ids a layer accepts (Embedding, CategoryEncoding).
_RANGE_ATTRIBUTES = ("input_dim", "num_tokens")


def fixed_batch_size(model):
    """The batch size the model was built for, or None if any fits."""
    sizes = {t.shape[0] for t in model.inputs} - {None}
    return sizes.pop() if len(sizes) == 1 else None


def random_inputs(model, input_shape=None, batch_size=2, seed=0):
    """Random inputs for every input of `model` that fit it.

    Float inputs are standard normal. Integer inputs are ids in the range of
    the layers they reach (`Embedding.input_dim`, `CategoryEncoding.num_tokens`;
    nested layers such as keras-hub's `TokenAndPositionEmbedding` included),
    with trailing padding zeros where an `Embedding` has `mask_zero=True`.
    Integer or bool inputs named like a mask (`padding_mask`) are padding
    masks: ones, then zeros, at least one 1 per row. A model built for a fixed
    batch size gets that batch size.

    Args:
        model: a Keras model.
        input_shape: None, a shape without the batch axis (one input), or a
            list of them (several inputs), to replace unknown sizes.
        batch_size: int, used unless the model fixes its batch size.
            Defaults to `2`.
        seed: int. Defaults to `0`.

    Returns:
        NumPy arrays in the structure of `model.input` (a lone array, a list
        or a dict, as the model takes them).
    """
    rng = np.random.default_rng(seed)
    batch_size = fixed_batch_size(model) or batch_size
    id_inputs = _id_ranges(model)
    shapes = input_shapes(model, input_shape, id_inputs)
    arrays = []
    for i, (tensor, shape) in enumerate(zip(model.inputs, shapes)):
        shape = (batch_size, *shape)
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if _is_mask_name(tensor.name) and (dtype == "bool" or "int" in dtype):
            arrays.append(_padding_mask(rng, shape).astype(dtype))
        elif "int" in dtype:
            high, mask_zero = id_inputs.get(i, (DEFAULT_ID_RANGE, False))
            ids = rng.integers(1 if mask_zero and high > 1 else 0, high, shape)
            if mask_zero:
                ids = ids * _padding_mask(rng, shape)
            arrays.append(ids.astype(dtype))
        elif dtype == "bool":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    if len(arrays) == 1:  # a Sequential model has no `model.input` structure
        return arrays[0]
    return keras.tree.pack_sequence_as(model.input, arrays)


def read_sample_inputs(model, sample_inputs, max_samples=256):
    """The user's `sample_inputs` (arrays, `(x, y)`, batches, a dataset) as
    NumPy inputs of `model`, at most `max_samples` rows.

    Raises:
        ValueError: if they do not fit the model's inputs.
    """
    x, _, _ = data_lib.take_sample(
        sample_inputs,
        max_samples,
        n_inputs=len(model.inputs),
        what="sample_inputs",
    )
    data_lib.check_inputs(model, x, what="sample_inputs")
    batch = fixed_batch_size(model)
    if batch is not None:
        rows = data_lib.rows(x)
        if rows < batch:
            raise ValueError(
                f"Model '{model.name}' is built for batches of {batch}; "
                f"`sample_inputs` has {rows} row(s). Expected at least {batch}."
            )
        keep = rows - rows % batch
        x = keras.tree.map_structure(lambda a: a[:keep], x)
    return x


def input_shapes(model, input_shape, id_inputs=()):
    """Per input, its shape without the batch axis, unknown sizes filled from
    `input_shape` or the nominal sizes (`NOMINAL_SEQUENCE` for every input of
    a model that takes token ids, else `NOMINAL_SIZE`)."""
    declared = [tuple(t.shape[1:]) for t in model.inputs]
    if input_shape is None:
        given = [None] * len(declared)
    elif len(declared) == 1 and all(
        isinstance(d, int) or d is None for d in input_shape
    ):
        given = [tuple(input_shape)]
    else:
        given = [None if s is None else tuple(s) for s in input_shape]
    if len(given) != len(declared):
        raise ValueError(
            f"Expected {len(declared)} input shape(s) for the model's inputs "
            f"{declared}. Received: input_shape={input_shape}"
        )
    shapes = []
    for want, have in zip(declared, given):
        if have is not None and len(have) != len(want):
            raise ValueError(
                f"Expected an input shape of rank {len(want)} like {want} "
                f"(without the batch axis). Received: {have}"
            )
        # With token ids, every unknown axis is the sequence: a padding or
        # attention mask must agree with the ids' length.
        nominal = NOMINAL_SEQUENCE if id_inputs else NOMINAL_SIZE
        shape = tuple(
            (h if h is not None else nominal) if w is None else w
            for w, h in zip(want, have or want)
        )
        shapes.append(shape)
    return shapes


def _id_ranges(model):
    """`{input index: (exclusive upper bound, mask_zero)}` for the integer
    inputs that reach a layer with a known id range."""
    try:
        graph = Graph.from_model(model)
    except ValueError:
        return {}
    readers = graph.consumers()
    ranges = {}
    for i, ref in enumerate(keras.tree.flatten(graph.inputs)):
        dtype = keras.backend.standardize_dtype(graph.producer(ref).dtypes[0])
        if "int" not in dtype:
            continue
        bounds, mask_zero = _reached_ranges(graph, ref, readers)
        if bounds:
            ranges[i] = (min(bounds), mask_zero)
    return ranges


def _reached_ranges(graph, start, readers):
    """Id ranges of the layers an integer tensor reaches, following it
    through the layers that keep it integer (casts, slices, reshapes)."""
    bounds, mask_zero, seen, todo = [], False, set(), [start]
    while todo:
        ref = todo.pop()
        for node in readers.get(ref, []):
            if node is None or node.id in seen:
                continue
            seen.add(node.id)
            for layer in keras_internals.sublayers(node.layer):
                for attribute in _RANGE_ATTRIBUTES:
                    value = getattr(layer, attribute, None)
                    if isinstance(value, int) and value > 0:
                        bounds.append(value)
                mask_zero |= bool(getattr(layer, "mask_zero", False))
            for index, dtype in enumerate(node.dtypes):
                dtype = keras.backend.standardize_dtype(dtype)
                if "int" in dtype:
                    todo.append(type(ref)(node.id, index))
    return bounds, mask_zero


def _is_mask_name(name):
    return "mask" in name.lower()


def _padding_mask(rng, shape):
    """Ones then zeros along the sequence axis (axis 1), at least one 1."""
    if len(shape) < 2:
        return np.ones(shape, dtype="int64")
    lengths = rng.integers(1, shape[1] + 1, shape[0])
    positions = np.arange(shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
    mask = positions < lengths.reshape((-1,) + (1,) * (len(shape) - 1))
    return np.broadcast_to(mask, shape).astype("int64")
