"""Inputs to run a model on for verification: the user's, or random ones that
fit the model (integer ids within every `Embedding` they reach, padding masks,
a fixed batch size, unknown sizes filled in)."""

import keras

from keras_collapse import data as data_lib
from keras_collapse.graph import keras_internals
from keras_collapse.graph import rewrite
from keras_collapse.graph.ir import Graph
from keras_collapse.graph.random_arrays import RANGE_ATTRIBUTES
from keras_collapse.graph.random_arrays import fixed_batch_size
from keras_collapse.graph.random_arrays import random_arrays


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
    return random_arrays(model, _id_ranges(model), input_shape, batch_size, seed)


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


def _id_ranges(model):
    """`{input index: (exclusive upper bound, mask_zero)}` for the integer
    inputs that reach a layer with a known id range."""
    try:
        graph = Graph.from_model(model)
    except ValueError:
        return {}
    readers = rewrite.readers(graph)
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

    def integer(node, index):
        return "int" in keras.backend.standardize_dtype(node.dtypes[index])

    bounds, mask_zero = [], False
    for node in rewrite.reach(graph, [start], integer, readers):
        for layer in keras_internals.sublayers(node.layer):
            for attribute in RANGE_ATTRIBUTES:
                value = getattr(layer, attribute, None)
                if isinstance(value, int) and value > 0:
                    bounds.append(value)
            mask_zero |= bool(getattr(layer, "mask_zero", False))
    return bounds, mask_zero
