"""Wall-clock latency of several models, timed side by side.

Models are timed *interleaved*: each repeat calls every model once, starting
from a different model each time, so that machine noise (another process, a
frequency change) hits all of them alike instead of whichever ran last.

Each model is timed through two call paths, because which one is fastest
depends on the backend: `model(x, training=False)` (eager; fast on torch,
where `predict_on_batch` adds overhead) and `model.predict_on_batch(x)`
(compiled: `jax.jit`, `tf.function`; far faster on JAX and TensorFlow). A
model's latency is the smaller of the two medians, and the result says which
path it came from. Outputs are converted to NumPy inside the timed region, so
asynchronous dispatch (JAX) cannot hide work.
"""

import gc
import statistics
import time

import keras
import numpy as np

from keras_collapse.checks import check_int
from keras_collapse.checks import check_model
from keras_collapse.checks import is_int
from keras_collapse.checks import shown
from keras_collapse.graph.ir import Graph
from keras_collapse.report.stats import resolve_input_shapes


def _call(model, x):
    return model(x, training=False)


def _predict_on_batch(model, x):
    return model.predict_on_batch(x)


CALL_PATHS = {"call": _call, "predict_on_batch": _predict_on_batch}


def measure_latency(
    models, batch_sizes=(1, 64), warmup=3, repeats=20, input_shape=None, seed=0
):
    """Times models on the same random inputs, interleaved.

    Args:
        models: list of keras.Model, or dict `{label: keras.Model}`. The first
            one is the reference for the speedups. In a list, models are
            labelled by their names, which must then be distinct.
        batch_sizes: sequence of positive ints. Batch sizes to time. Defaults
            to `(1, 64)`.
        warmup: int >= 0. Untimed calls per model and call path before timing
            (compilation happens there). Defaults to 3.
        repeats: int >= 1. Timed calls per model, call path and batch size.
            Defaults to 20.
        input_shape: tuple, or list of tuples (one per input), or None. Input
            shape without the batch axis, for axes the models leave unknown.
            Defaults to None.
        seed: int. Seed of the random inputs. Defaults to 0.

    Returns:
        dict with keys `"backend"`, `"batch_sizes"` (list), `"warmup"`,
        `"repeats"`, `"reference"` (label of the first model) and `"models"`:
        `{label: {"seconds": {batch_size: s}, "speedup": {batch_size: r},
        "path": {batch_size: name}, "medians": {batch_size: {path: s}}}}`,
        where `seconds` is the smaller median over the call paths, `path` the
        call path it came from, and `speedup` the reference's seconds divided
        by this model's (above 1: faster than the reference).

    Raises:
        ValueError: on a bad argument, on models whose inputs differ, or on
            input axes left unknown by both the models and `input_shape`.

    Example:

    >>> inputs = keras.Input((16,))
    >>> wide = keras.Model(inputs, keras.layers.Dense(256)(inputs))
    >>> narrow = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    >>> result = kc.measure_latency({"wide": wide, "narrow": narrow}, repeats=3)
    >>> result["reference"], result["batch_sizes"]
    ('wide', [1, 64])
    >>> result["models"]["wide"]["speedup"][64]  # the reference, to itself
    1.0
    >>> speedup = result["models"]["narrow"]["speedup"][64]  # above 1: faster
    """
    labeled = _labeled_models(models)
    batch_sizes = _batch_sizes(batch_sizes)
    check_int("warmup", warmup, minimum=0)
    check_int("repeats", repeats, minimum=1)
    check_int("seed", seed, minimum=0)
    structures, shapes, dtypes = _common_inputs(labeled, input_shape)
    rng = np.random.default_rng(seed)
    medians = {label: {} for label in labeled}
    for batch_size in batch_sizes:
        flat = [
            keras.ops.convert_to_tensor(_random_array(rng, batch_size, shape, dtype))
            for shape, dtype in zip(shapes, dtypes, strict=True)
        ]
        inputs = {
            label: keras.tree.pack_sequence_as(structures[label], flat)
            for label in labeled
        }
        timings = _time_interleaved(labeled, inputs, warmup, repeats)
        for label, per_path in timings.items():
            medians[label][batch_size] = {
                path: statistics.median(times) for path, times in per_path.items()
            }
    return _summarize(labeled, batch_sizes, medians, warmup, repeats)


def _time_interleaved(labeled, inputs, warmup, repeats):
    """Returns `{label: {path: [seconds, ...]}}`."""
    labels = list(labeled)
    for label in labels:
        for run in CALL_PATHS.values():
            for _ in range(warmup):
                _complete(run(labeled[label], inputs[label]))
    times = {label: {path: [] for path in CALL_PATHS} for label in labels}
    gc.collect()
    for repeat in range(repeats):
        start = repeat % len(labels)
        for label in labels[start:] + labels[:start]:
            for path, run in CALL_PATHS.items():
                began = time.perf_counter()
                _complete(run(labeled[label], inputs[label]))
                times[label][path].append(time.perf_counter() - began)
    return times


def _complete(outputs):
    """Waits for the outputs to exist (JAX dispatches asynchronously)."""
    for tensor in keras.tree.flatten(outputs):
        keras.ops.convert_to_numpy(tensor)


def _summarize(labeled, batch_sizes, medians, warmup, repeats):
    reference = next(iter(labeled))
    models = {}
    for label in labeled:
        best = {
            size: min(medians[label][size], key=medians[label][size].get)
            for size in batch_sizes
        }
        seconds = {size: medians[label][size][best[size]] for size in batch_sizes}
        models[label] = {"seconds": seconds, "path": best, "medians": medians[label]}
    for entry in models.values():
        entry["speedup"] = {
            size: models[reference]["seconds"][size] / entry["seconds"][size]
            for size in batch_sizes
        }
    return {
        "backend": keras.backend.backend(),
        "batch_sizes": list(batch_sizes),
        "warmup": warmup,
        "repeats": repeats,
        "reference": reference,
        "models": models,
    }


# ----------------------------------------------------------------- arguments
def _labeled_models(models):
    if isinstance(models, dict):
        labeled = dict(models)
    elif isinstance(models, (list, tuple)):
        labeled = {getattr(m, "name", None): m for m in models}
        if len(labeled) != len(models):
            names = [getattr(m, "name", None) for m in models]
            raise ValueError(
                "Models in a list are labelled by their names, which must be "
                "distinct; pass a dict `{label: model}` instead. Received "
                f"models named {names}"
            )
    else:
        raise ValueError(
            "`models` must be a list of keras.Model or a dict "
            f"`{{label: keras.Model}}`. Received: models={shown(models)}"
        )
    if not labeled:
        raise ValueError(
            f"`models` must hold at least one model. Received: models={models!r}"
        )
    for label, model in labeled.items():
        check_model(f"models[{label!r}]", model)
    return labeled


def _batch_sizes(batch_sizes):
    if is_int(batch_sizes):
        batch_sizes = (batch_sizes,)
    if (
        not isinstance(batch_sizes, (list, tuple))
        or not batch_sizes
        or not all(is_int(b) and b >= 1 for b in batch_sizes)
    ):
        raise ValueError(
            "`batch_sizes` must be a non-empty sequence of positive ints. "
            f"Received: batch_sizes={shown(batch_sizes)}"
        )
    return tuple(dict.fromkeys(int(b) for b in batch_sizes))


def _common_inputs(labeled, input_shape):
    """Checks that all models take the same inputs.

    Returns:
        `({label: input structure of Refs}, shapes without batch, dtypes)`.
    """
    structures, signatures = {}, {}
    for label, model in labeled.items():
        graph = Graph.from_model(model)
        nodes = [graph.producer(r) for r in keras.tree.flatten(graph.inputs)]
        shapes = resolve_input_shapes([n.shape for n in nodes], input_shape)
        structures[label] = graph.inputs
        signatures[label] = [
            (shape[1:], n.dtypes[0]) for shape, n in zip(shapes, nodes, strict=True)
        ]
    reference = next(iter(labeled))
    for label, signature in signatures.items():
        if not _compatible(signature, signatures[reference]):
            raise ValueError(
                f"All models must take the same inputs to be timed on them. "
                f"'{reference}' takes {signatures[reference]}, '{label}' takes "
                f"{signature} (shape without batch axis, dtype)"
            )
    shapes = [_merged(column) for column in zip(*signatures.values(), strict=True)]
    if any(None in shape for shape in shapes):
        raise ValueError(
            f"The models' input shapes {shapes} have unknown axes (None); timing "
            "needs every size. Pass `input_shape`, e.g. input_shape=(32, 32, 3)."
        )
    return structures, shapes, [dtype for _, dtype in signatures[reference]]


def _compatible(signature, reference):
    return len(signature) == len(reference) and all(
        dtype == ref_dtype
        and len(shape) == len(ref_shape)
        and all(
            a is None or b is None or a == b
            for a, b in zip(shape, ref_shape, strict=True)
        )
        for (shape, dtype), (ref_shape, ref_dtype) in zip(
            signature, reference, strict=True
        )
    )


def _merged(column):
    """One input's shape over all models: a size any model fixes."""
    shapes = [shape for shape, _ in column]
    return tuple(
        next((d for d in sizes if d is not None), None)
        for sizes in zip(*shapes, strict=True)
    )


def _random_array(rng, batch_size, shape, dtype):
    shape = (batch_size, *shape)
    if np.issubdtype(np.dtype(dtype), np.floating):
        return rng.standard_normal(shape).astype(dtype)
    # Integer inputs are usually indices (Embedding): small ones are valid.
    return rng.integers(0, 2, size=shape).astype(dtype)
