"""Checking that a rebuilt model computes what the original computed."""

import keras
import numpy as np

NOMINAL_SIZE = 32


class VerificationError(ValueError):
    """The surgery result differs from the input model beyond the tolerance."""


def random_inputs(model, input_shape=None, batch_size=2, seed=0):
    """Random inputs for every input of `model`, unknown sizes filled in.

    Args:
        model: a Keras model.
        input_shape: None, a shape without the batch axis (one input), or a
            list of them (several inputs), to replace unknown sizes.
        batch_size: int. Defaults to `2`.
        seed: int. Defaults to `0`.

    Returns:
        NumPy arrays in the structure of `model.input` (a lone array, a list
        or a dict, as the model takes them).
    """
    rng = np.random.default_rng(seed)
    shapes = _input_shapes(model, input_shape)
    arrays = []
    for tensor, shape in zip(model.inputs, shapes):
        shape = (batch_size, *shape)
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if "int" in dtype:
            arrays.append(rng.integers(0, 8, shape).astype(dtype))
        elif dtype == "bool":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    if len(arrays) == 1:  # a Sequential model has no `model.input` structure
        return arrays[0]
    return keras.tree.pack_sequence_as(model.input, arrays)


def _input_shapes(model, input_shape):
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
        shape = tuple(
            (h if h is not None else NOMINAL_SIZE) if w is None else w
            for w, h in zip(want, have or want)
        )
        shapes.append(shape)
    return shapes


def run_inference(model, inputs):
    """`model(inputs)` at inference, by the quickest path for one call: JAX
    runs eager ops one by one (each compiled on first use), so one compiled
    `predict_on_batch` is several times faster there; elsewhere eager is."""
    if keras.backend.backend() == "jax":
        return model.predict_on_batch(inputs)
    return model(inputs, training=False)


def output_deviation(reference, candidate, inputs):
    """Largest relative deviation between two models' outputs on `inputs`.

    `max |a - b| / max |a|` per output, the largest over outputs. Positions
    where both are NaN count as equal; a NaN in one only is infinite.
    """
    expected = keras.tree.flatten(run_inference(reference, inputs))
    actual = keras.tree.flatten(run_inference(candidate, inputs))
    worst = 0.0
    for a, b in zip(expected, actual):
        a = keras.ops.convert_to_numpy(a).astype("float64")
        b = keras.ops.convert_to_numpy(b).astype("float64")
        if a.shape != b.shape:
            return float("inf")
        both_nan = np.isnan(a) & np.isnan(b)
        a, b = np.where(both_nan, 0.0, a), np.where(both_nan, 0.0, b)
        diff = np.abs(a - b)
        if not np.all(np.isfinite(diff)):
            return float("inf")
        scale = max(float(np.max(np.abs(a), initial=0.0)), 1e-12)
        worst = max(worst, float(np.max(diff, initial=0.0)) / scale)
    return worst
