"""Random arrays that fit a model's inputs, given the id ranges of its integer
inputs: the part of `sample_inputs` that needs no `Graph`, so that unrolling
(below the graph) can check a traced layer on them."""

import keras
import numpy as np

from keras_collapse.graph import keras_internals

# An axis of unknown size is taken to be this large, everywhere: random
# inputs have it, cost models price it, statistics count MACs with it.
NOMINAL_SIZE = 32
# Unknown sizes of an id input (a sequence length): short, so that position
# embeddings built for short sequences still fit.
NOMINAL_SEQUENCE = 8
# Ids drawn for an integer input that reaches no layer with a known range.
DEFAULT_ID_RANGE = 8
# Attributes that bound the ids a layer accepts (Embedding, CategoryEncoding).
RANGE_ATTRIBUTES = ("input_dim", "num_tokens")


def fixed_batch_size(model):
    """The batch size the model was built for, or None if any fits."""
    sizes = {t.shape[0] for t in model.inputs} - {None}
    return sizes.pop() if len(sizes) == 1 else None


def random_arrays(model, id_ranges, input_shape=None, batch_size=2, seed=0):
    """Random inputs for every input of `model`; `id_ranges` maps an integer
    input's index to `(exclusive upper bound, mask_zero)` (see
    `sample_inputs.random_inputs`)."""
    rng = np.random.default_rng(seed)
    batch_size = fixed_batch_size(model) or batch_size
    shapes = input_shapes(model, input_shape, id_ranges)
    arrays = []
    for i, (tensor, shape) in enumerate(zip(model.inputs, shapes)):
        shape = (batch_size, *shape)
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if _is_mask_name(tensor.name) and (dtype == "bool" or "int" in dtype):
            arrays.append(_padding_mask(rng, shape).astype(dtype))
        elif "int" in dtype:
            high, mask_zero = id_ranges.get(i, (DEFAULT_ID_RANGE, False))
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


def layer_id_range(layers):
    """`(exclusive upper bound, mask_zero)` that fits every id-taking layer
    among `layers` and their sublayers, or None if none takes ids: the safe
    range when it is not known which layer an id input reaches."""
    bounds, mask_zero = [], False
    for outer in layers:
        for layer in keras_internals.sublayers(outer):
            for attribute in RANGE_ATTRIBUTES:
                value = getattr(layer, attribute, None)
                if isinstance(value, int) and value > 0:
                    bounds.append(value)
            mask_zero |= bool(getattr(layer, "mask_zero", False))
    return (min(bounds), mask_zero) if bounds else None


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
