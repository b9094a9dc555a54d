"""ON/OFF statistics of every collapsible activation over data (EASIER).

A neuron is ON where its pre-activation `z > 0` and OFF where `z <= 0` (a
value of exactly 0 counts as OFF). Over the samples (and, for a conv, every
position), channel c is ON a fraction `p_on` of the time; its binary entropy
`-p log2 p - (1 - p) log2 (1 - p)` is 0 when the channel is always ON or
always OFF and 1 bit when it is a coin toss. A layer's entropy is the mean
over its channels (EASIER, arXiv 2404.18949): 0 means the activation is
linear on these data (ON channels pass, OFF channels are zero).
"""

import dataclasses

import keras
import numpy as np

from keras_collapse.checks import check_int
from keras_collapse.collapsible import collapsible_layers
from keras_collapse.graph import Graph
from keras_collapse.graph.channel_moments import MomentsProbe
from keras_collapse.graph.channel_moments import channel_axis
from keras_collapse.scores.batchnorm import BatchNormAnalysis
from keras_collapse.scores.batchnorm import LayerStates
from keras_collapse.scores.batchnorm import check_confidence
from keras_collapse.scores.batchnorm import fill_gaussian_states
from keras_collapse.scores.layer_analysis import LayerAnalysis
from keras_collapse.scores.layer_analysis import check_state

STATES = ("always ON", "mixed", "always OFF")


def binary_entropy(p):
    """`-p log2 p - (1 - p) log2 (1 - p)` in bits, elementwise (0 at 0 and 1)."""
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))
    return np.nan_to_num(h, nan=0.0)


@dataclasses.dataclass
class LayerStatistics:
    """One collapsible activation's pre-activation statistics over data.

    Attributes:
        name: str, the activation layer.
        activation: str, the function it computes now ('gelu', 'relu a=0.3',
            'linear': `CollapsibleActivation.describe`).
        axis: int, the channel axis of its input.
        p_on: per channel, the fraction of values > 0.
        mean: per channel, the mean pre-activation.
        std: per channel, its standard deviation (population).
        entropy: float, the mean over channels of the binary entropy of
            `p_on`, in bits (0: linear on these data).
        linearized: bool, whether the layer already computes the identity.
        samples: int, the rows the statistics were computed over.
    """

    name: str
    activation: str
    axis: int
    p_on: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    entropy: float
    linearized: bool
    samples: int
    _layer: object = dataclasses.field(default=None, repr=False)
    reason = None
    analysed = True

    @property
    def channels(self):
        return len(self.p_on)

    @property
    def source(self):
        return f"{self.samples} samples"

    @property
    def score(self):
        return self.entropy

    def fraction(self, state):
        """The fraction of channels "always ON", "mixed" or "always OFF"."""
        check_state(state, STATES)
        if state == "always ON":
            return float(np.mean(self.p_on == 1.0))
        if state == "always OFF":
            return float(np.mean(self.p_on == 0.0))
        return float(np.mean((self.p_on > 0.0) & (self.p_on < 1.0)))

    @property
    def never_on(self):
        """Per channel, bool: whether it was OFF on every sample."""
        return self.p_on == 0.0

    def as_dict(self):
        return {
            "entropy": self.entropy,
            "p_on": self.p_on.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }


class ActivationStatistics(LayerAnalysis):
    """`activation_statistics`' result: one `LayerStatistics` per collapsible
    activation, in graph order. `print()` it for a table, `plot()` it,
    index it by position or name.

    Attributes:
        samples: int, the rows read.
        training: bool, whether the layers ran in training mode.
    """

    title = "EASIER: ON/OFF entropy over data"
    states = STATES
    score_name = "entropy (bits)"
    source_name = "Measured on"

    def __init__(self, layers, samples, training):
        super().__init__(layers)
        self.samples = samples
        self.training = training

    def heading(self):
        mode = "training" if self.training else "inference"
        return (
            f"ON/OFF statistics over {self.samples} samples ({len(self)} "
            f"activations, {mode} mode; entropy in bits, 0 = linear on these data)"
        )

    def candidates(self):
        """The layers not linearized yet, lowest entropy first."""
        return sorted(
            (s for s in self.layers if not s.linearized), key=lambda s: s.entropy
        )

    def as_dict(self):
        """`{activation_name: {"entropy", "p_on", "mean", "std"}}`."""
        return {s.name: s.as_dict() for s in self.layers}

    def gaussian_states(self, confidence=0.95):
        """TLC's Gaussian ON/OFF model fed with the measured mean and std
        instead of a BatchNormalization's beta and gamma (what the TLC code
        does for models without BN): `z ~ N(mean_c, std_c^2)` per channel.

        Returns:
            a `BatchNormAnalysis` with `source="data"`.
        """
        check_confidence(confidence)
        layers = []
        for s in self.layers:
            states = LayerStates(
                name=s.name,
                activation=s.activation,
                batchnorm=None,
                linearized=s.linearized,
                measured_on=s.source,
            )
            if np.all(np.isfinite(s.mean)) and np.all(np.isfinite(s.std)):
                fill_gaussian_states(
                    states, s._layer, s.mean, s.std, s.axis, confidence
                )
            else:
                states.reason = "non-finite statistics"
            layers.append(states)
        return BatchNormAnalysis(layers, confidence, source="data")


def activation_statistics(
    model, data, *, layers=None, batch_size=128, max_samples=None, training=False
):
    """ON/OFF statistics of the input of each collapsible activation, over
    data, in one pass through the model.

    One auxiliary model runs the model's own layers and returns, for every
    requested activation at once, per-channel counts and moments of its input
    (reduced inside the compiled function); batches are merged as they come,
    so memory does not depend on the number of samples. The model is not
    modified (in training mode, the BatchNormalization moving statistics it
    would update are put back).

    By default (`training=False`) the layers run in inference mode, as the
    model will be deployed (TLC and EGP measure this way): BatchNormalization
    uses its moving statistics, dropout is off. `training=True` measures as
    the EASIER code does, during training: batch statistics and dropout, so
    the result depends on `batch_size`.

    Args:
        model: a Functional or Sequential `keras.Model` with collapsible
            activations (nested models are looked into).
        data: the inputs: arrays (`x`, or `(x, y[, sample_weight])` whose
            labels are ignored; a list / dict of arrays for a multi-input
            model), a `tf.data.Dataset`, a `keras.utils.PyDataset`, a torch
            `DataLoader`, or any iterable of such batches.
        layers: list of collapsible activation names (or layers), or None
            for all. Defaults to `None`.
        batch_size: int, the rows per batch for array data. Defaults to
            `128`.
        max_samples: int or None, the most rows to read (needed for an
            endless iterable). Defaults to `None` (all).
        training: bool, the mode the layers run in. Defaults to `False`.

    Returns:
        An `ActivationStatistics`.

    Raises:
        ValueError: if the model has no collapsible activation, `layers`
            names something else, or the data do not fit the model's inputs
            (shapes named), are empty, non-finite, or endless without
            `max_samples`.

    Example:

    >>> inputs = keras.Input((4,))
    >>> h = inputs
    >>> for name, beta in (("sure", [-9.0, 9.0, 9.0]), ("coin", [0.0, 0.0, 0.0])):
    ...     bn = keras.layers.BatchNormalization(name=f"bn_{name}")
    ...     h = kc.CollapsibleActivation("relu", name=name)(
    ...         bn(keras.layers.Dense(3)(h)))
    ...     _ = bn.beta.assign(beta)  # "sure": one channel OFF, two ON
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(h))
    >>> x = np.random.default_rng(0).standard_normal((256, 4)).astype("float32")
    >>> stats = kc.activation_statistics(model, x)
    >>> print(stats)  # entropy and ON/OFF fractions
    ON/OFF statistics over 256 samples (2 activations, inference mode; ...)
    ...
    sure  relu  256 samples  3  67%  0%  33%  0.000  no
    coin  relu  256 samples  3 ...
    >>> print(stats["sure"].p_on)  # per channel, the fraction of z > 0
    [0. 1. 1.]
    >>> stats.candidates()[0].name  # the lowest entropy: EASIER's pick
    'sure'


    Reference:
        EASIER, arXiv 2404.18949.
    """
    check_int("batch_size", batch_size, 1)
    if max_samples is not None:
        check_int("max_samples", max_samples, 1)
    chosen = select_layers(model, layers, "activation_statistics")
    graph = Graph.from_model(model)
    return statistics_on_graph(
        model, graph, chosen, data, batch_size, max_samples, training
    )


def select_layers(model, layers, who):
    """The collapsible activations `layers` (names or layers; None: all)."""
    found = collapsible_layers(model)
    if not found:
        raise ValueError(
            f"{who} found no collapsible activation in model '{model.name}'. "
            "Convert its activations first: `model = "
            "keras_collapse.make_collapsible(model)`."
        )
    if layers is None:
        return found
    if isinstance(layers, (str, keras.layers.Layer)):
        layers = [layers]
    by_name = {layer.name: layer for layer in found}
    chosen = []
    for item in layers:
        layer = by_name.get(item if isinstance(item, str) else item.name)
        if layer is None or (not isinstance(item, str) and layer is not item):
            raise ValueError(
                f"Expected collapsible activations of model '{model.name}' (one "
                f"of {sorted(by_name)}). Received: {item!r}"
            )
        chosen.append(layer)
    return chosen


def statistics_on_graph(
    model, graph, chosen, data, batch_size=128, max_samples=None, training=False
):
    """`activation_statistics` for `chosen` layers of a graph read before."""
    sites = {}  # id(layer) -> (input Ref, channel axis) of every call
    for node in graph.layer_nodes():
        if any(node.layer is layer for layer in chosen):
            ref = node.input_refs[0]
            sites.setdefault(id(node.layer), []).append((ref, channel_axis(graph, ref)))
    missing = [layer.name for layer in chosen if id(layer) not in sites]
    if missing:
        raise ValueError(
            f"Collapsible activations {missing} are not called in the graph of "
            f"model '{model.name}', so no data reaches them."
        )
    taps = [tap for layer in chosen for tap in sites[id(layer)]]
    moments, samples = MomentsProbe(model, graph, taps, training).run(
        data, batch_size=batch_size, max_samples=max_samples
    )
    records, start = [], 0
    for layer in chosen:
        calls = len(sites[id(layer)])
        m = moments[start]
        for other in moments[start + 1 : start + calls]:  # a shared layer
            m.merge(other)
        start += calls
        records.append(
            LayerStatistics(
                name=layer.name,
                activation=layer.describe(),
                axis=sites[id(layer)][0][1],
                p_on=m.p_on,
                mean=m.mean,
                std=np.sqrt(m.variance),
                entropy=float(np.mean(binary_entropy(m.p_on))),
                linearized=layer.is_linear,
                samples=samples,
                _layer=layer,
            )
        )
    return ActivationStatistics(records, samples, bool(training))
