"""`inspect`: what keras_collapse sees in a model, and what it could save,
before any training."""

import dataclasses

import keras

from keras_collapse.collapsible import collapsible_layers
from keras_collapse.collapsible import model_layers
from keras_collapse.convert import make_collapsible
from keras_collapse.report.inspection import format_inspection
from keras_collapse.report.potential import Potential
from keras_collapse.report.stats import model_stats
from keras_collapse.scores import analyze_batchnorm
from keras_collapse.surgery.units import merge_units

CONVERTED = "make_collapsible(model)"


@dataclasses.dataclass
class Inspection:
    """`inspect`'s answer.

    Attributes:
        model: str, the model's name.
        stats: `ModelStats` of the model as it is.
        collapsible: list of dict, one per collapsible activation: name,
            activation, alpha (mean, min, max, size), linear, locked.
        batchnorm_layers: int, the model's BatchNormalization layers.
        batchnorm_analysis: `BatchNormAnalysis` or None.
        potential: `Potential` or None: what linearizing every merge unit
            would save, and which activations never pay.
        analysed: str or None, what the BN analysis and the potential read:
            "model", or "make_collapsible(model)" for a model without
            collapsible activations (converted at alpha 0, same outputs).
        notes: list of str.
    """

    model: str
    stats: object
    collapsible: list
    batchnorm_layers: int
    batchnorm_analysis: object
    potential: object
    analysed: str | None
    notes: list

    def as_dict(self):
        """JSON-ready (the `potential` key as `Potential.as_dict()`)."""
        return {
            "model": self.model,
            "stats": self.stats.as_dict(),
            "collapsible": [dict(layer) for layer in self.collapsible],
            "batchnorm_layers": self.batchnorm_layers,
            "batchnorm_analysis": (
                None
                if self.batchnorm_analysis is None
                else self.batchnorm_analysis.as_dict()
            ),
            "batchnorm_analysis_of": (
                None if self.batchnorm_analysis is None else self.analysed
            ),
            "potential": None if self.potential is None else self.potential.as_dict(),
            "potential_of": None if self.potential is None else self.analysed,
            "notes": list(self.notes),
        }

    def summary(self):
        return format_inspection(self)

    def __str__(self):
        return self.summary()


def inspect(
    model,
    *,
    input_shape=None,
    confidence=0.95,
    potential=True,
    exact=True,
    cost_model=None,
):
    """What keras_collapse sees in a model, and what it could save.

    Reads, without modifying `model`: its statistics (`model_stats`), its
    collapsible activations, TLC's BatchNorm analysis when it has
    BatchNormalization layers (`analyze_batchnorm`), and the *potential*:
    what the surgery would save if every merge unit (`merge_units`) were
    linearized (depth, parameters, MACs and latency under `cost_model`, each
    as a share of the BN-folded model), and which activations can never pay,
    why, and what would help. A model without collapsible activations is
    read as `make_collapsible(model)` converts it (alpha 0, same outputs).

    Args:
        model: a Functional or Sequential `keras.Model`.
        input_shape: shape without the batch axis (or one per input) for
            axes the model leaves unknown. Defaults to `None` (32, noted).
        confidence: float in (0.5, 1), the BN analysis' confidence.
            Defaults to `0.95`.
        potential: bool, whether to compute the potential (dry runs of the
            surgery: seconds on a large model). Defaults to `True`.
        exact: bool, the surgery mode the potential prices. Defaults to
            `True`.
        cost_model: the cost model that prices latency (`MacCostModel`,
            `MeasuredCostModel`). Defaults to `None` (MACs).

    Returns:
        `Inspection`: `print` it, or `.as_dict()`; `.potential.share("depth")`
        is the largest depth `target` `collapse` can reach.

    Raises:
        ValueError: if `model` is not a Functional or Sequential model, or
            `input_shape` does not fit it.

    Example:

    >>> x = keras.Input((8,))
    >>> h = keras.layers.Dense(16, activation="relu")(x)
    >>> model = keras.Model(x, keras.layers.Dense(4)(h))
    >>> found = keras_collapse.inspect(model)
    >>> found.potential.share("depth")  # linearizing the ReLU halves it
    0.5
    >>> print(found)  # statistics, activations, potential, merge units
    Model '...'
    ...
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a keras.Model. Received: model={model!r} of type "
            f"{type(model).__name__}"
        )
    stats = model_stats(model, input_shape=input_shape)
    layers = collapsible_layers(model)
    batchnorms = [
        layer
        for layer in model_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    notes = []
    read, analysed = _readable(model, layers, notes)
    analysis = None
    if not batchnorms:
        notes.append("No BatchNormalization layers: no BN analysis.")
    elif read is not None:
        analysis = analyze_batchnorm(read, confidence=confidence)
    found = None
    if potential and read is not None:
        found = _potential(read, exact, cost_model, notes)
    if analysed == CONVERTED and (analysis is not None or found is not None):
        notes.append(
            "The model has no collapsible activations: the BN analysis and the "
            "potential read its activations as keras_collapse.make_collapsible"
            "(model) converts them (alpha 0, same outputs)."
        )
    return Inspection(
        model=model.name,
        stats=stats,
        collapsible=[_layer_info(layer) for layer in layers],
        batchnorm_layers=len(batchnorms),
        batchnorm_analysis=analysis,
        potential=found,
        analysed=analysed,
        notes=notes,
    )


def _readable(model, layers, notes):
    """`(model to analyse or None, what it is)`: the model itself, or its
    conversion when it has no collapsible activations."""
    if layers:
        return model, "model"
    try:
        converted = make_collapsible(model)
    except ValueError as e:
        notes.append(
            "No collapsible activations, and make_collapsible failed: "
            + " ".join(str(e).split())
        )
        return None, None
    if not collapsible_layers(converted):
        notes.append("No activations to linearize: nothing to analyse or merge.")
        return None, None
    return converted, CONVERTED


def _potential(model, exact, cost_model, notes):
    try:
        found = merge_units(model, exact=exact, cost_model=cost_model)
    except ValueError as e:
        notes.append("No potential: " + " ".join(str(e).split()))
        return None
    return Potential.of(found, cost_model)


def _layer_info(layer):
    alpha = layer.alpha_numpy()
    return {
        "name": layer.name,
        "activation": layer.activation,
        "alpha_mean": float(alpha.mean()),
        "alpha_min": float(alpha.min()),
        "alpha_max": float(alpha.max()),
        "alpha_size": int(alpha.size),
        "linear": layer.is_linear,
        "locked": layer.is_locked,
    }
