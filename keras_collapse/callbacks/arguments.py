"""Argument checks the linearization callbacks share (the engine's and the
joint method's), on top of `keras_collapse.checks`."""

from keras_collapse.checks import check_int
from keras_collapse.checks import renamed


def check_candidates(candidates):
    """`candidates` as a list of layer names, or None."""
    if candidates is not None and (
        isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates)
    ):
        raise ValueError(
            "`candidates` must be a list of activation layer names or None. "
            f"Received: candidates={candidates!r}"
        )
    return None if candidates is None else list(candidates)


def check_cost_model(cost_model):
    """Raises unless `cost_model` is None or callable as the surgery calls it."""
    if cost_model is not None and not callable(cost_model):
        raise ValueError(
            "`cost_model` must be callable as cost_model(kind, kernel_shape, "
            f"output_positions), or None. Received: cost_model={cost_model!r}"
        )
    return cost_model


def check_data(name, value):
    """Raises for a scalar or string where data (arrays or batches) belong;
    the data themselves are checked against the model at train begin."""
    if value is not None and isinstance(value, (int, float, str, bytes)):
        raise ValueError(
            f"`{name}` must be arrays or an iterable of batches. Received: "
            f"{name}={value!r} of type {type(value).__name__}"
        )
    return value


def check_samples(samples, kwargs, where, default=1024):
    """`samples` (the rows of the fixed samples), also taken under its old
    name `validation_samples` (with a DeprecationWarning), removed from
    `kwargs`. `samples=None` means `default`; both names at once is an
    error."""
    old = renamed(kwargs, "validation_samples", "samples", where)
    if old is not None:
        if samples is not None:
            raise ValueError(
                f"{where}: pass `samples` only (`validation_samples` is its "
                f"old name). Received: samples={samples!r}, "
                f"validation_samples={old!r}"
            )
        samples = old
    if samples is None:
        samples = default
    return check_int("samples", samples, 1, what="the rows of the fixed samples")
