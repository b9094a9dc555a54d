"""Checking that a rebuilt model computes what the original computed, on the
paths users run: eagerly and compiled (`predict`)."""

import dataclasses

import keras
import numpy as np

from keras_collapse.graph import Graph
from keras_collapse.graph import keras_internals
from keras_collapse.graph.random_arrays import fixed_batch_size

# How many times the model's own low-precision deviation (or the compute
# dtype's epsilon) a mixed-precision result may deviate from the float32 truth.
LOW_PRECISION_FACTOR = 4.0


class VerificationError(ValueError):
    """The surgery result differs from the input model beyond the tolerance."""


@dataclasses.dataclass
class Verification:
    """What a verification measured.

    Attributes:
        deviation: float, the worst relative deviation `max|a - b| / max|a|`
            of the candidate from the reference over every path and output.
        paths: dict, the deviation per path the candidate ran on ("eager":
            `model(x, training=False)`; "compiled": `predict_on_batch`, the
            function `predict` and `model.export` trace).
        inputs: str, "sample_inputs" (the user's) or "random".
        tolerance: float, the largest deviation allowed.
        policy: str, the reference's compute dtype ("float32", "float16"...).
        noise: float or None, for a low-precision reference: how far the
            reference itself is from its own float32 copy (the truth both are
            measured against), which sets `tolerance`.
    """

    deviation: float
    paths: dict
    inputs: str
    tolerance: float
    policy: str = "float32"
    noise: float | None = None

    @property
    def passed(self):
        return bool(self.deviation <= self.tolerance)

    def describe(self):
        paths = ", ".join(f"{path} {dev:.2g}" for path, dev in self.paths.items())
        text = f"deviation {self.deviation:.2g} ({paths}) on {self.inputs} inputs"
        if self.noise is not None:
            text += (
                f"; {self.policy} model checked against its float32 copy, from "
                f"which the input model itself deviates by {self.noise:.2g}"
            )
        return text + f"; allowed {self.tolerance:.2g}"

    def as_dict(self):
        return dataclasses.asdict(self)


def verify_equivalent(reference, candidate, inputs, tolerance=1e-5, *, inputs_kind=""):
    """Measures how far `candidate` computes from `reference` on `inputs`.

    The reference runs eagerly (compiled on JAX, whose eager mode runs the
    same XLA kernels one by one); the candidate runs eagerly and compiled
    (only compiled on JAX), since a backend may compile a pattern wrongly
    that it computes right eagerly. A reference whose layers compute in
    float16 / bfloat16 is judged against its own float32 copy: the allowed
    deviation is `LOW_PRECISION_FACTOR` times the larger of the reference's
    own deviation from that copy and the compute dtype's epsilon.

    Args:
        reference: the input `keras.Model`.
        candidate: the model to check.
        inputs: NumPy inputs of the models.
        tolerance: float, the allowed deviation at full precision.
        inputs_kind: str, how the inputs were made, for the record.

    Returns:
        `Verification`.
    """
    policy = _low_precision_dtype(reference)
    truth, noise = reference, None
    if policy is not None:
        truth = _float32_copy(reference)
        if truth is not None:
            noise = _deviation(
                _run(truth, inputs, _reference_path()),
                _run(reference, inputs, _reference_path()),
            )
        else:
            truth = reference
        eps = float(np.finfo(np.dtype("float16")).eps) if policy == "float16" else 2**-7
        tolerance = max(tolerance, LOW_PRECISION_FACTOR * max(noise or 0.0, eps))
    expected = _run(truth, inputs, _reference_path())
    paths = {
        path: _deviation(expected, _run(candidate, inputs, path))
        for path in _candidate_paths()
    }
    return Verification(
        deviation=max(paths.values()),
        paths=paths,
        inputs=inputs_kind or "given",
        tolerance=float(tolerance),
        policy=policy or "float32",
        noise=noise,
    )


def _reference_path():
    return "compiled" if keras.backend.backend() == "jax" else "eager"


def _candidate_paths():
    if keras.backend.backend() == "jax":
        return ("compiled",)
    return ("eager", "compiled")


def run_inference(model, inputs):
    """`model(inputs)` at inference, by the quickest path for one call: JAX
    runs eager ops one by one (each compiled on first use), so one compiled
    `predict_on_batch` is several times faster there; elsewhere eager is."""
    return _run(model, inputs, _reference_path())


def _run(model, inputs, path):
    """Flat NumPy outputs of `model` on `inputs` along `path`, in batches of
    the model's fixed batch size if it has one."""
    batch = fixed_batch_size(model)
    rows = len(keras.tree.flatten(inputs)[0])
    if batch is None or rows == batch:
        chunks = [inputs]
    else:
        chunks = [
            keras.tree.map_structure(lambda a, i=i: a[i : i + batch], inputs)
            for i in range(0, rows, batch)
        ]
    parts = []
    for chunk in chunks:
        if path == "compiled":
            out = model.predict_on_batch(chunk)
        else:
            out = model(chunk, training=False)
        parts.append([keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(out)])
    return [np.concatenate(p) for p in zip(*parts)]


def output_deviation(reference, candidate, inputs):
    """Largest relative deviation between two models' outputs on `inputs`,
    both run by `run_inference`."""
    return _deviation(
        _run(reference, inputs, _reference_path()),
        _run(candidate, inputs, _reference_path()),
    )


def _deviation(expected, actual):
    """`max |a - b| / max |a|` per output, the largest over outputs.

    Positions where both are NaN count as equal; a NaN in one only is
    infinite, as is a shape mismatch.
    """
    if len(expected) != len(actual):
        return float("inf")
    worst = 0.0
    for a, b in zip(expected, actual):
        a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
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


def _low_precision_dtype(model):
    """ "float16" / "bfloat16" if some layer of `model` computes in it."""
    for layer in keras_internals.sublayers(model):
        dtype = str(getattr(layer, "compute_dtype", "") or "")
        if dtype in ("float16", "bfloat16"):
            return dtype
    return None


def _float32_copy(model):
    """The model with every floating layer at float32 (weights copied), or
    None if it cannot be rebuilt that way."""
    try:
        return Graph.from_model(model).to_model(dtype="float32", keep_outputs=False)
    except Exception:  # a layer that refuses float32: judge on its own terms
        return None
