"""Per-channel moments of tensors inside a model, over data, in one pass.

What the activation statistics (EASIER's entropy, data-driven TLC) and the
BatchNorm re-estimation both need: for tensors at chosen places of a model's
graph, per channel, the number of values, their mean, their sum of squared
deviations and how many are > 0. One `ProbeModel` returns all of them for a
batch (reduced inside the compiled function, so only 4 x channels numbers per
tap leave it); batches are merged in float64 with Chan's parallel formula,
so memory does not grow with the data and no precision is lost to
`E[z^2] - E[z]^2`.
"""

import dataclasses

import keras
import numpy as np

from keras_collapse import data as data_lib
from keras_collapse.graph.probe import ProbeModel


class ChannelMoments(keras.layers.Layer):
    """`[count > 0, count, mean, sum of squared deviations]` per channel of
    a batch, as a `(4, channels)` float32 tensor. `axis` is the channel axis;
    every other axis (batch and positions) is reduced."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, z):
        z = keras.ops.cast(z, "float32")
        axis = self.axis % len(z.shape)
        axes = tuple(a for a in range(len(z.shape)) if a != axis)
        mean = keras.ops.mean(z, axis=axes, keepdims=True)
        m2 = keras.ops.sum(keras.ops.square(z - mean), axis=axes)
        on = keras.ops.sum(keras.ops.cast(z > 0, "float32"), axis=axes)
        count = keras.ops.cast(keras.ops.size(z), "float32") / keras.ops.cast(
            keras.ops.shape(z)[axis], "float32"
        )
        return keras.ops.stack(
            [on, keras.ops.ones_like(on) * count, keras.ops.squeeze(mean, axes), m2]
        )


@dataclasses.dataclass
class Moments:
    """Running per-channel moments (float64), merged batch by batch."""

    count: np.ndarray | None = None
    on: np.ndarray | None = None
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, batch):
        """Merges a `ChannelMoments` output: `(4, channels)`, or one such
        block per replica stacked along axis 0 (`(4 * replicas, channels)`),
        as a model built in a `tf.distribute` strategy's scope returns."""
        batch = np.asarray(batch, np.float64)
        for on, count, mean, m2 in batch.reshape(-1, 4, batch.shape[-1]):
            if np.any(count > 0):  # a replica may get no rows of a last batch
                self.merge(Moments(count, on, mean, m2))

    def merge(self, other):
        """Merges the moments of other values of the same channels."""
        if self.count is None:
            self.count, self.on, self.mean, self.m2 = (
                other.count,
                other.on,
                other.mean,
                other.m2,
            )
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.count / total
        self.m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / total
        self.on = self.on + other.on
        self.count = total

    @property
    def variance(self):
        """The population (biased) variance, as BatchNormalization uses."""
        return self.m2 / self.count

    @property
    def p_on(self):
        """The fraction of values > 0 (a value of exactly 0 counts as OFF)."""
        return self.on / self.count


class MomentsProbe:
    """Measures the moments of the tensors `taps` (`[(Ref, channel_axis),
    ...]`) of `model`'s `graph`; build it once, `run` it on data as often as
    needed (the compiled function is kept).

    With `training=True` the layers run in training mode (batch statistics,
    dropout); every non-trainable variable is put back after a run, so the
    model is left as it was (BatchNormalization's moving statistics
    included).
    """

    def __init__(self, model, graph, taps, training=False):
        self.model = model
        self.training = bool(training)
        self._probe = ProbeModel(
            graph,
            [ref for ref, _ in taps],
            [ChannelMoments(axis) for _, axis in taps],
            training=training,
        )

    def run(self, data, *, batch_size=128, max_samples=None, what="data"):
        """Returns `(moments, samples)`: a list of `Moments` (one per tap)
        and the number of rows read.

        Raises:
            ValueError: if the data does not fit the model, has non-finite
                values, is empty, or is endless without `max_samples`.
        """
        model, probe = self.model, self._probe
        saved = (
            [(v, keras.ops.convert_to_numpy(v)) for v in probe.non_trainable_variables]
            if self.training
            else []
        )
        moments = [Moments() for _ in probe._taps]
        samples = 0
        try:
            batches = data_lib.iter_batches(
                data,
                batch_size,
                n_inputs=len(model.inputs),
                max_samples=max_samples,
                what=what,
            )
            for x, _, _ in batches:
                data_lib.check_inputs(model, x, what)
                x = data_lib.cast_inputs(model, x)  # as `predict` does
                for m, out in zip(moments, probe.predict_on_batch(x)):
                    m.add(keras.ops.convert_to_numpy(out))
                samples += data_lib.rows(x)
        finally:
            for variable, value in saved:
                variable.assign(value)
        return moments, samples


def channel_axis(graph, ref):
    """The channel axis of a tensor: 1 where the layer that makes it is
    `channels_first`, else the last axis."""
    layer = graph.producer(ref).layer
    if getattr(layer, "data_format", None) == "channels_first":
        return 1
    axis = getattr(layer, "axis", None)  # a BatchNormalization's own axis
    if isinstance(layer, keras.layers.BatchNormalization) and isinstance(axis, int):
        return axis
    return -1
