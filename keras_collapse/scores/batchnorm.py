"""TLC's data-free analysis: the ON/OFF state of every channel that a
BatchNormalization feeds into a collapsible activation."""

import dataclasses

import keras
import numpy as np

from keras_collapse.checks import check_model
from keras_collapse.checks import check_number
from keras_collapse.scores import gaussian
from keras_collapse.scores.layer_analysis import LayerAnalysis
from keras_collapse.scores.layer_analysis import check_state
from keras_collapse.scores.pairs import find_pairs

_RELU_DEFAULTS = {"negative_slope": 0.0, "max_value": None, "threshold": 0.0}


@dataclasses.dataclass
class LayerStates:
    """The analysis of one collapsible activation.

    Per-channel arrays are None when the layer could not be analysed
    (`reason` says why: no BatchNormalization before it, non-finite
    statistics...).

    Attributes:
        name: str, the activation layer's name.
        activation: str, the function it computes now ('relu', 'relu a=-0.4',
            'linear': `CollapsibleActivation.describe`).
        batchnorm: str or None, the name of the BatchNormalization it reads.
        p_off: per channel, P(z <= 0) under z ~ N(beta, gamma^2).
        error_if_on: per channel, E|f(z) - z|: the error of letting the
            channel pass through (the activation locked linear).
        error_if_off: per channel, E|f(z)|: the error of zeroing the channel.
        off: per channel, bool, whether TLC forces it OFF: only where the
            analysis calls it OFF (`P(OFF) >= confidence`); every other
            channel passes through (the table and the action agree).
        state: per channel, "ON" / "OFF" where `P(ON)` / `P(OFF)` is at least
            the analysis' `confidence`, else "uncertain".
        score: float or None, the mean over channels of the expected error of
            the forced state (OFF where called OFF, else ON) relative to the
            channel's RMS pre-activation `sqrt(beta^2 + gamma^2)`: 0 when
            every channel is surely ON or OFF; 0.40 for a plain ReLU channel
            about which nothing is known (beta = 0); more for a channel
            mostly, but not surely, OFF. Lower is safer to linearize.
        uninformed: float or None, the score of a layer about which nothing
            is known (every channel at mean 0: an untrained BN), for this
            layer's activation and slope; a score near it says the
            statistics do not tell the channels' states.
        linearized: bool, whether the layer already computes the identity.
        reason: str or None, why the layer has no statistics.
    """

    name: str
    activation: str
    batchnorm: str | None
    linearized: bool
    p_off: np.ndarray | None = None
    error_if_on: np.ndarray | None = None
    error_if_off: np.ndarray | None = None
    off: np.ndarray | None = None
    state: np.ndarray | None = None
    score: float | None = None
    uninformed: float | None = None
    reason: str | None = None
    measured_on: str | None = None  # "1024 samples" when fed from data

    @property
    def analysed(self):
        """bool, whether the layer has channel statistics."""
        return self.score is not None

    @property
    def channels(self):
        return 0 if self.p_off is None else len(self.p_off)

    @property
    def source(self):
        """str or None, what the statistics were read from (the BN's name,
        or the sample they were measured on)."""
        return self.batchnorm or self.measured_on

    def fraction(self, state):
        """The fraction of channels in `state` ("ON", "OFF" or "uncertain")."""
        check_state(state, BatchNormAnalysis.states)
        if self.state is None:
            return float("nan")
        return float(np.mean(self.state == state))

    def as_dict(self):
        return {
            "name": self.name,
            "activation": self.activation,
            "batchnorm": self.batchnorm,
            "channels": self.channels,
            "on": self.fraction("ON"),
            "off": self.fraction("OFF"),
            "uncertain": self.fraction("uncertain"),
            "score": self.score,
            "linearized": self.linearized,
            "reason": self.reason,
        }


class BatchNormAnalysis(LayerAnalysis):
    """The TLC analysis of a model: one `LayerStates` per collapsible
    activation, in graph order. `print()` it for a table; `plot()` draws it.

    Index it by position or by activation name; iterate over it.

    Attributes:
        confidence: float, the probability at which a channel is ON / OFF.
        source: str, where the Gaussian model's mean and std come from:
            "batchnorm" (beta and gamma) or "data" (measured,
            `ActivationStatistics.gaussian_states`).
    """

    title = "TLC: BatchNorm ON/OFF states"
    score_name = "score (expected relative error)"

    def __init__(self, layers, confidence, source="batchnorm"):
        super().__init__(layers)
        self.confidence = confidence
        self.source = source

    @property
    def source_name(self):
        return "BatchNorm" if self.source == "batchnorm" else "Measured on"

    def heading(self):
        where = "BatchNorm" if self.source == "batchnorm" else "Measured"
        return (
            f"{where} ON/OFF analysis ({len(self)} activations; ON/OFF at "
            f"P >= {self.confidence:g}; score: expected relative error, lower "
            "is safer)"
        )

    def candidates(self):
        """The analysed layers that are not linearized yet, lowest score first."""
        found = [s for s in self.layers if s.analysed and not s.linearized]
        return sorted(found, key=lambda s: s.score)

    def as_dict(self):
        return {
            "confidence": self.confidence,
            "source": self.source,
            "layers": [s.as_dict() for s in self.layers],
        }


def analyze_batchnorm(model, confidence=0.95):
    """Reads, from BatchNormalization weights alone, which channels of each
    collapsible activation are ON, OFF or uncertain.

    Data-free (TLC, arXiv 2412.15077): the pre-activation of channel c is
    modelled as `z ~ N(beta_c, gamma_c^2)`. Layers without a
    BatchNormalization directly before them (e.g. after a residual `Add`) and
    layers whose BN has non-finite weights are listed with a `reason` and no
    statistics. `center=False` reads as `beta = 0` (every channel
    uncertain), `scale=False` as `gamma = 1`. For activations other than ReLU
    the Gaussian model still says when `z > 0`; the errors are those of the
    activation itself (ReLU6's saturation above 6 counts against ON, GELU's
    negative dip against OFF). The model is not modified.

    Args:
        model: a Functional or Sequential `keras.Model` with collapsible
            activations (see `make_collapsible`).
        confidence: float in (0.5, 1), how sure the model must be for a
            channel to be called ON or OFF rather than uncertain.
            Defaults to `0.95`.

    Returns:
        A `BatchNormAnalysis`.

    Example:

    >>> inputs = keras.Input((4,))
    >>> h = inputs
    >>> for name, beta in (("sure", [-9.0, 9.0, 9.0]), ("coin", [0.0, 0.0, 0.0])):
    ...     bn = keras.layers.BatchNormalization(name=f"bn_{name}")
    ...     h = kc.CollapsibleActivation("relu", name=name)(
    ...         bn(keras.layers.Dense(3)(h)))
    ...     _ = bn.beta.assign(beta)  # "sure": one channel OFF, two ON
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(h))
    >>> analysis = kc.analyze_batchnorm(model)
    >>> print(analysis)  # one row per activation: ON / OFF / uncertain
    BatchNorm ON/OFF analysis (2 activations; ON/OFF at P >= 0.95; ...)
    ...
    sure  relu  bn_sure  3   67%    0%  33%  0.000  no
    coin  relu  bn_coin  3    0%  100%   0%  0.399  no
    ...
    >>> analysis.candidates()[0].name  # the safest layer to linearize
    'sure'
    """
    check_confidence(confidence)
    check_model("model", model)
    return analyze_pairs(find_pairs(model), confidence)


def analyze_pairs(pairs, confidence=0.95):
    """`analyze_batchnorm` on pairs found before (`scores.pairs.find_pairs`)."""
    return BatchNormAnalysis([layer_states(p, confidence) for p in pairs], confidence)


def batchnorm_arrays(bn):
    """`(gamma, beta)` of a BatchNormalization, with its defaults when
    `scale` / `center` is off."""
    channels = bn.moving_mean.shape[0]
    gamma = keras.ops.convert_to_numpy(bn.gamma) if bn.scale else np.ones(channels)
    beta = keras.ops.convert_to_numpy(bn.beta) if bn.center else np.zeros(channels)
    return np.asarray(gamma, np.float64), np.asarray(beta, np.float64)


def layer_states(pair, confidence):
    layer, bn = pair.activation, pair.batchnorm
    states = LayerStates(
        name=layer.name,
        activation=layer.describe(),
        batchnorm=None if bn is None else bn.name,
        linearized=layer.is_linear,
        reason=pair.reason,
    )
    if bn is None:
        return states
    if not all(np.all(np.isfinite(w)) for w in bn.get_weights()):
        states.reason = "non-finite BatchNormalization weights"
        return states
    gamma, beta = batchnorm_arrays(bn)
    axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
    return fill_gaussian_states(states, layer, beta, gamma, axis, confidence)


def fill_gaussian_states(states, layer, mean, std, axis, confidence):
    """Fills `states` from the Gaussian model `z ~ N(mean, std^2)` of each
    channel of `layer`'s pre-activation (`axis`: its channel axis); TLC reads
    mean and std from a BatchNormalization's beta and gamma, or from data."""
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    alpha = _alpha_per_channel(layer, axis, len(mean))
    if layer.activation == "relu" and all(
        layer.activation_kwargs.get(k, v) == v for k, v in _RELU_DEFAULTS.items()
    ):
        error_on, error_off = gaussian.relu_errors(mean, std, alpha)
    else:
        error_on, error_off = gaussian.quadrature_errors(
            lambda z: _activation_numpy(layer, z), mean, std, alpha
        )
    p_off = gaussian.probability_off(mean, std)
    # Only what the analysis calls OFF is zeroed: the table and the action
    # agree, and a channel merely leaning OFF is not cut on a guess.
    off = p_off >= confidence
    rms = np.sqrt(mean**2 + std**2)
    relative = np.where(off, error_off, error_on) / np.where(rms > 0, rms, 1.0)
    states.p_off = p_off
    states.error_if_on = error_on
    states.error_if_off = error_off
    states.off = off
    states.state = np.where(
        off, "OFF", np.where(1.0 - p_off >= confidence, "ON", "uncertain")
    )
    states.score = float(np.mean(relative)) if len(relative) else 0.0
    states.uninformed = _uninformed_score(layer, alpha)
    return states


def _uninformed_score(layer, alpha):
    """The score of channels at mean 0, std 1 (nothing known: an untrained
    BatchNormalization), for `layer`'s activation and slopes."""
    zero, one = np.zeros_like(alpha), np.ones_like(alpha)
    if layer.activation == "relu" and all(
        layer.activation_kwargs.get(k, v) == v for k, v in _RELU_DEFAULTS.items()
    ):
        error_on, _ = gaussian.relu_errors(zero, one, alpha)
    else:
        error_on, _ = gaussian.quadrature_errors(
            lambda z: _activation_numpy(layer, z), zero, one, alpha
        )
    return float(np.mean(error_on)) if len(error_on) else 0.0


def _alpha_per_channel(layer, axis, channels):
    """The blend slope of each channel along `axis` of the input (alphas
    shared along other axes are averaged over them)."""
    alpha = np.asarray(layer.alpha_numpy(), np.float64)
    if alpha.ndim == 0:
        return np.full(channels, float(alpha))
    axis = axis % (alpha.ndim + 1) - 1  # alpha has no batch axis
    alpha = np.moveaxis(alpha, axis, -1).reshape(-1, alpha.shape[axis])
    return np.broadcast_to(alpha.mean(axis=0), (channels,)).astype(np.float64)


def _activation_numpy(layer, z):
    """The activation a collapsible layer blends, evaluated on a NumPy array."""
    out = layer._activation_fn(
        keras.ops.convert_to_tensor(z, "float32"), **layer.activation_kwargs
    )
    return keras.ops.convert_to_numpy(out)


def check_confidence(confidence):
    check_number(
        "confidence",
        confidence,
        0.5,
        1,
        low_open=True,
        high_open=True,
        what="how sure a channel's state must be",
    )
