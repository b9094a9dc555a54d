"""Re-estimating BatchNormalization moving statistics from data (what NNCF
calls BN adaptation), exactly.

Training keeps a moving average of each BN's batch statistics; when the
layers before a BN change (a slope pulled toward 1, an activation
linearized, weights pruned), that average lags behind and inference drifts
from training. Here each BN's `moving_mean` / `moving_variance` become the
exact population mean and (biased, as BN uses) variance of its input over
the data, in inference mode. A BN's input depends on the BNs before it, so
the BNs are set level by level (a BN's level: how many BNs lie on the longest
path before it), one pass over the data per level, each pass running only
the layers up to that level.
"""

import contextlib

import keras

from keras_collapse import data as data_lib
from keras_collapse.checks import check_int
from keras_collapse.checks import check_model
from keras_collapse.graph import Graph
from keras_collapse.graph import kinds
from keras_collapse.graph.channel_moments import MomentsProbe


class BatchNormRecalibrator:
    """Re-estimates the moving statistics of `model`'s BatchNormalizations;
    build it once and `run` it as often as needed (callbacks do, before every
    judgment): the per-level functions are compiled once.

    Args:
        model: a Functional or Sequential `keras.Model` (nested models are
            looked into).
    """

    def __init__(self, model):
        self.model = model
        self._graph = Graph.from_model(model)
        self._levels = _levels(self._graph)
        self._probes = {}

    @property
    def layers(self):
        """The BatchNormalization layers it sets, level by level."""
        return [bn for level in self._levels for bn, _ in level]

    def run(self, data, *, batch_size=128, max_samples=None, what="data"):
        """Sets every BN's moving statistics from `data`; returns the number
        of rows read per pass. Raises a ValueError (as
        `activation_statistics`) before changing anything if the data do not
        fit."""
        samples = 0
        for i, level in enumerate(self._levels):
            if i not in self._probes:
                taps = [tap for _, sites in level for tap in sites]
                self._probes[i] = MomentsProbe(self.model, self._graph, taps)
            moments, samples = self._probes[i].run(
                data, batch_size=batch_size, max_samples=max_samples, what=what
            )
            start = 0
            for bn, sites in level:
                m = moments[start]
                for other in moments[start + 1 : start + len(sites)]:
                    m.merge(other)  # a shared BN: its statistics over every call
                start += len(sites)
                dtype = keras.backend.standardize_dtype(bn.moving_mean.dtype)
                bn.moving_mean.assign(m.mean.astype(dtype))
                bn.moving_variance.assign(m.variance.astype(dtype))
        return samples

    @contextlib.contextmanager
    def settled(self, data, *, batch_size=128):
        """The moving statistics re-estimated from `data` for the body of a
        `with`, then put back as they were. A change measured on stale
        statistics reads as worse than it is once training has caught up
        (an inverted-residual block of a MobileNetV2-style net: 0.68-0.86
        accuracy on stale statistics, 0.97-0.98 settled); put back, so the
        statistics training and its guard use never come from the data a
        measurement was made on."""
        saved = [
            (
                keras.ops.convert_to_numpy(bn.moving_mean),
                keras.ops.convert_to_numpy(bn.moving_variance),
            )
            for bn in self.layers
        ]
        try:
            self.run(data, batch_size=batch_size)
            yield
        finally:
            for bn, (mean, variance) in zip(self.layers, saved):
                bn.moving_mean.assign(mean)
                bn.moving_variance.assign(variance)


def recalibrate_batchnorm(
    model, data, *, batch_size=128, max_samples=None, in_place=False
):
    """Sets every BatchNormalization's moving statistics to the exact
    population statistics of its input over `data` (BN adaptation).

    Call it after anything that changed the layers before a BN (training
    with `LinearityRegularizer`, linearizing, pruning) and before `surgery`
    folds the statistics into the convs: inference then computes what the
    network computes on that data distribution. A few thousand training rows
    are plenty. The callbacks that have data call it before they judge a
    change and at the end of training.

    The statistics are exact, not another moving average: the BNs are set in
    graph order, each from its input as computed with the BNs before it
    already set (one pass per BN level, in inference mode), so the model's
    inference outputs on `data` are standardized exactly by the new
    statistics.

    Args:
        model: a Functional or Sequential `keras.Model`.
        data: arrays (`x` or `(x, y[, sample_weight])`, labels ignored), a
            `tf.data.Dataset`, `keras.utils.PyDataset`, torch `DataLoader`,
            or any iterable of batches; multi-input models take lists /
            dicts.
        batch_size: int, rows per batch for array data. Defaults to `128`.
        max_samples: int or None, the most rows to read (needed for an
            endless iterable). Defaults to `None`.
        in_place: bool, whether to change `model` itself; by default a copy
            (`keras.models.clone_model`, nested models included) is changed
            and returned, and `model` is left alone. Defaults to `False`.

    Returns:
        the recalibrated model (`model` itself when `in_place`).

    Raises:
        ValueError: if the data do not fit the model's inputs, are empty,
            non-finite or endless without `max_samples` (nothing is changed
            then), or the model cannot be copied (use `in_place=True`).

    Example:

        model.fit(x, y, epochs=5)                 # alphas or layers changed
        model = keras_collapse.recalibrate_batchnorm(model, x[:4096])
        small = keras_collapse.surgery(model)     # folds settled statistics
    """
    check_int("batch_size", batch_size, 1)
    if max_samples is not None:
        check_int("max_samples", max_samples, 1)
    check_model("model", model)
    target = model if in_place else _copy(model)
    # The first level's pass reads (and checks) every batch before any BN
    # changes; a one-shot iterator is kept for the passes of the next levels.
    data = data_lib.replayable(data, batch_size, len(model.inputs), max_samples)
    BatchNormRecalibrator(target).run(
        data, batch_size=batch_size, max_samples=max_samples
    )
    return target


def _copy(model):
    try:
        copy = keras.models.clone_model(model, recursive=True)
    except Exception as e:
        raise ValueError(
            f"recalibrate_batchnorm could not copy model '{model.name}' "
            f"({type(e).__name__}: {e}). Pass `in_place=True` to recalibrate "
            "the model itself."
        ) from None
    copy.set_weights(model.get_weights())
    return copy


def _levels(graph):
    """`[[(bn, [(input Ref, axis), ...]), ...], ...]`: the BNs grouped by
    level, each with the inputs of its calls."""
    level_of, sites = {}, {}
    before = {}  # node id -> the highest BN level at or before it
    for node in graph.topological():
        reached = max((before.get(r.node, 0) for r in node.input_refs), default=0)
        if not node.is_input and kinds.is_batchnorm(node.layer):
            bn = node.layer
            axis = bn.axis if isinstance(bn.axis, int) else None
            if axis is None:
                continue  # a BN over several axes: left as it is
            level = max(level_of.get(id(bn), (0, None))[0], reached + 1)
            level_of[id(bn)] = (level, bn)
            sites.setdefault(id(bn), []).append((node.input_refs[0], axis))
            reached = level
        before[node.id] = reached
    levels = {}
    for key, (level, bn) in level_of.items():
        levels.setdefault(level, []).append((bn, sites[key]))
    return [levels[k] for k in sorted(levels)]
