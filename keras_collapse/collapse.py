"""`collapse`: from a trained, compiled model to a shallower plain Keras
model in one call: convert, fine-tune with the joint method, re-estimate
BatchNorm, run the verified surgery, report."""

import math
import time

import keras
import numpy as np

from keras_collapse import data as data_lib
from keras_collapse.callbacks.budget import Budget
from keras_collapse.callbacks.budget import check_target
from keras_collapse.callbacks.joint import JointLinearizationCallback
from keras_collapse.checks import check_bool
from keras_collapse.checks import check_int
from keras_collapse.checks import check_model
from keras_collapse.collapsible import collapsible_layers
from keras_collapse.convert import make_collapsible
from keras_collapse.report.collapse_report import CollapseReport
from keras_collapse.report.latency import measure_latency
from keras_collapse.report.stats import model_stats
from keras_collapse.surgery import surgery
from keras_collapse.surgery.units import check_objective

# Of the softened logits' KL divergence (Hinton et al.; Keras' default).
TEMPERATURE = 3.0
STAGES = (
    "convert",
    "fine-tune",
    "surgery",
    "evaluate",
    "latency",
)


# The phases' default shares per objective: a depth or latency hard set
# locks whole merge units at once and recovers longer.
AUTO_SHARES = {"activations": (0.5, 0.25), "depth": (0.4, 0.2), "latency": (0.4, 0.2)}


def phase_shares(objective, search, polarize):
    """`(search, polarize)` with "auto" read from `AUTO_SHARES`."""
    auto_search, auto_polarize = AUTO_SHARES[objective]
    return (
        auto_search if search == "auto" else search,
        auto_polarize if polarize == "auto" else polarize,
    )


def collapse(
    model,
    data,
    *,
    validation_data=None,
    objective="activations",
    target=0.5,
    epochs=4,
    batch_size=None,
    teacher=None,
    exact=True,
    cost_model=None,
    search="auto",
    polarize="auto",
    prior=None,
    samples=2048,
    latency=True,
    seed=0,
    verbose=1,
):
    """Makes a trained model shallower in one call, to a target.

    On a converted copy of `model` (the input model never changes):

    1. every activation between linear layers becomes collapsible
       (`make_collapsible`, slopes trainable as gates);
    2. one `fit` of `epochs` with `JointLinearizationCallback`: every gate
       learned at once toward the target, then the chosen set made exactly
       linear and the rest exactly their activation, then recovery; with
       the model's compiled loss, metrics and optimizer (a fresh instance of
       its configuration), or distilled from `teacher`;
    3. BatchNorm re-estimated on the training data;
    4. the verified `surgery`: a plain Keras model, compiled like `model`.

    Args:
        model: a trained, compiled Functional or Sequential `keras.Model`.
        data: the training data, as `fit` takes it: `(x, y)` or `(x, y,
            sample_weight)` arrays, or a dataset of such batches.
        validation_data: `(x, y)` for `fit`'s epoch lines and the report's
            before / after metrics. Defaults to `None`.
        objective: "activations" (the papers' count), "depth" or "latency"
            (merge units, priced by the surgery's dry runs). Defaults to
            `"activations"`.
        target: float in (0, 1], the fraction to remove: of the candidate
            activations (rounded up: 0.5 linearizes at least half), of the
            BN-folded model's real depth, or of its latency under
            `cost_model`. Defaults to `0.5`.
        epochs: int >= 1, the fine-tuning epochs (shared by the search, the
            polarization and the recovery). Defaults to `4`.
        batch_size: int or None, `fit`'s batch size for arrays. Defaults to
            `None` (Keras' 32).
        teacher: None, "auto" (a frozen copy of `model`) or a model with the
            same inputs and outputs: fine-tune by distillation from it
            (`keras.distillation.Distiller` with `LogitsDistillation`, or a
            KL divergence on outputs that are probabilities), half the
            student's own loss. Defaults to `None`: on the comparison
            table, a teacher trained as long as the base cost accuracy.
        exact: bool, the surgery's `exact`. Defaults to `True`.
        cost_model: the surgery's cost model (`MacCostModel`,
            `MeasuredCostModel`), for "latency" and the merges. Defaults to
            `None` (MACs).
        search, polarize: shares of the fine-tuning steps for the joint
            method's phases (see `JointLinearizationCallback`), or "auto":
            `0.5` and `0.25` with "activations"; `0.4` and `0.2` with
            "depth" / "latency", whose hard set changes whole blocks and
            needs the longer recovery (40 % of the steps instead of 25 %:
            on MobileNetV2 at a 30 % depth target, −0.97 points against the
            control instead of −1.36, 3 seeds; see benchmarks/README.md).
            Defaults to `"auto"`.
        prior: None, "tlc", "easier" or a scorer: ranks the candidates
            before the search (the safer pulled faster, winning ties); see
            `JointLinearizationCallback`. Defaults to `None`.
        samples: int, training rows used for BatchNorm re-estimation and
            verification. Defaults to `2048`.
        latency: bool, whether to time the input model and the result at
            batch 1 and 64. Defaults to `True`.
        seed: int, for the samples. Defaults to `0`.
        verbose: 0 (silent), 1 (a progress line per stage, `fit`'s epoch
            lines and the method's) or 2 (`fit`'s progress bars too).
            Defaults to `1`.

    Returns:
        `(small, report)`: the plain Keras result and a `CollapseReport`
        (activations linearized, depth / params / MACs before and after,
        validation metrics before and after, latency).

    Raises:
        ValueError: before any training, for a model that is not compiled,
            a bad `target` / `objective` / `epochs`, data that do not fit
            the model, a teacher whose outputs differ, a model with no
            activation to collapse, or a depth / latency target no set of
            merge units reaches (with the most that can be).

    Example (a trained classifier; a fine-tune of several epochs):

        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        model.fit(x_train, y_train, epochs=10)
        small, report = keras_collapse.collapse(
            model, (x_train, y_train), validation_data=(x_val, y_val))
        print(report)  # half the activations linearized, depth before/after
    """
    started = time.perf_counter()
    _check_model(model)
    target = check_target(target)
    check_objective(objective)
    check_int("epochs", epochs, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    check_int("samples", samples, 1)
    check_bool("exact", exact)
    check_bool("latency", latency)
    n_inputs = len(model.inputs)
    sample = data_lib.take_sample(
        data, samples, seed, n_inputs=n_inputs, labels=True, what="data"
    )
    data_lib.check_inputs(model, sample[0], "data")
    if validation_data is not None:
        val = data_lib.take_sample(
            validation_data,
            10**9,
            seed,
            n_inputs=n_inputs,
            labels=True,
            what="validation_data",
        )
        data_lib.check_inputs(model, val[0], "validation_data")
    progress = _Progress(verbose)

    progress.stage("convert")
    work = make_collapsible(model, trainable_alpha=True)
    names = [layer.name for layer in collapsible_layers(work)]
    if not names:
        raise ValueError(
            f"collapse found no activation to collapse in model '{model.name}' "
            "(make_collapsible converts every elementwise activation between "
            "linear layers; heads and gates are left alone)."
        )
    config = _compile_config(model)
    _compile(work, config)
    Budget.plan(work, names, objective, target, exact, cost_model)  # reachable?
    teacher_model, teacher_label = _teacher(teacher, model, work, sample[0])
    metrics_before = _evaluate(work, validation_data)

    search, polarize = phase_shares(objective, search, polarize)
    progress.stage("fine-tune")
    joint = JointLinearizationCallback(
        target,
        objective,
        data=sample[0],
        search=search,
        polarize=polarize,
        prior=prior,
        exact=exact,
        cost_model=cost_model,
        samples=samples,
        seed=seed,
        verbose=1 if verbose else 0,
    )
    trainer = work if teacher_model is None else _distiller(teacher_model, work, config)
    fit_data, fit_kwargs = _fit_arguments(data, batch_size)
    try:
        trainer.fit(
            *fit_data,
            epochs=epochs,
            validation_data=validation_data,
            callbacks=[joint],
            verbose={0: 0, 1: 2}.get(verbose, 1),
            **fit_kwargs,
        )
    finally:
        if teacher_model is not None and teacher_model is teacher:
            teacher.trainable = _TEACHER_TRAINABLE.pop(id(teacher), True)

    progress.stage("surgery")
    small, surgery_report = surgery(
        work,
        exact=exact,
        cost_model=cost_model,
        sample_inputs=sample[0],
        return_report=True,
    )
    _compile(small, _portable(config))

    progress.stage("evaluate")
    metrics_after = _evaluate(small, validation_data)
    timing = None
    if latency:
        progress.stage("latency")
        timing = measure_latency(
            {"input model": model, "collapsed": small}, batch_sizes=(1, 64)
        )
    progress.done(time.perf_counter() - started)
    report = CollapseReport(
        objective=objective,
        target=target,
        linearized=list(joint.linearized),
        candidates=len(joint.budget.names),
        before=model_stats(model),
        after=model_stats(small),
        metrics_before=metrics_before,
        metrics_after=metrics_after,
        latency=timing,
        surgery=surgery_report,
        events=list(joint.events),
        epochs=epochs,
        teacher=teacher_label,
    )
    if verbose:
        print(report)
    return small, report


def _check_model(model):
    check_model("model", model)
    if (
        not getattr(model, "compiled", False)
        or getattr(model, "optimizer", None) is None
        or getattr(model, "loss", None) is None
    ):
        raise ValueError(
            "collapse fine-tunes with the model's compiled loss and optimizer, "
            f"and model '{model.name}' has none: call `model.compile(optimizer="
            "..., loss=..., metrics=[...])` first (the optimizer's configuration "
            "is reused; its state is not)."
        )


def _compile_config(model):
    config = model.get_compile_config()
    if not config:
        raise ValueError(
            f"collapse could not read how model '{model.name}' was compiled "
            "(`model.get_compile_config()` is empty): compile it with "
            "serializable arguments."
        )
    return config


def _portable(config):
    """The result's compile config: Keras saves the `jit_compile` it resolved
    on the training backend (False on TensorFlow CPU and PyTorch), and a
    result saved with False runs `predict` eagerly on JAX (3x slower at batch
    1 on the MobileNetV2 benchmark). False becomes "auto": the backend that
    loads the result decides. An explicit True stays."""
    if config.get("jit_compile") is False:
        config = {**config, "jit_compile": "auto"}
    return config


def _compile(model, config):
    model.compile_from_config(config)


def _evaluate(model, validation_data):
    if validation_data is None:
        return {}
    x, y, w = _arrays_or_none(validation_data)
    if x is None:
        result = model.evaluate(validation_data, verbose=0, return_dict=True)
    else:
        result = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    return {k: float(v) for k, v in result.items()}


def _arrays_or_none(data):
    if isinstance(data, tuple) and 2 <= len(data) <= 3:
        x, y, *rest = data
        return x, y, rest[0] if rest else None
    return None, None, None


def _fit_arguments(data, batch_size):
    x, y, w = _arrays_or_none(data)
    if x is None:
        return (data,), {}
    return (x, y), {"sample_weight": w, "batch_size": batch_size}


_TEACHER_TRAINABLE = {}


def _teacher(teacher, model, work, x):
    """`(teacher model or None, label)`; checks the outputs match."""
    if teacher is None:
        return None, "none"
    if isinstance(teacher, str) and teacher == "auto":
        frozen = keras.models.clone_model(model)
        frozen.set_weights(model.get_weights())
        label = "auto"
    elif isinstance(teacher, keras.Model):
        frozen, label = teacher, teacher.name
        _TEACHER_TRAINABLE[id(teacher)] = teacher.trainable
    else:
        raise ValueError(
            "`teacher` must be None, 'auto' or a keras.Model with the model's "
            f"inputs and outputs. Received: teacher={teacher!r}"
        )
    rows = keras.tree.map_structure(lambda a: a[:2], x)
    got = [np.shape(o) for o in keras.tree.flatten(frozen.predict(rows, verbose=0))]
    want = [np.shape(o) for o in keras.tree.flatten(work.predict(rows, verbose=0))]
    if got != want:
        _TEACHER_TRAINABLE.pop(id(teacher), None)
        raise ValueError(
            f"`teacher` must produce what the model produces: on two rows of "
            f"`data`, model '{model.name}' gives outputs of shapes {want}, "
            f"teacher '{frozen.name}' gives {got}."
        )
    return frozen, label


def _distiller(teacher, student, config):
    try:
        from keras import distillation
    except ImportError:
        raise ImportError(
            f"`teacher=` distills through `keras.distillation` (Keras 3.12+); "
            f"this is Keras {keras.__version__}: `pip install -U keras`."
        ) from None
    config = keras.saving.deserialize_keras_object(config)
    losses = keras.tree.flatten(config["loss"])
    probabilities = any(
        not getattr(loss, "get_config", dict)().get("from_logits", True)
        for loss in losses
    )
    # A KLDivergence instance, not the string: Keras 3.15 turns the string
    # into the bare function, which LogitsDistillation then applies to raw
    # logits (a negative "divergence").
    if probabilities:
        # Outputs are probabilities already: match them as they are.
        term = distillation.FeatureDistillation(loss=keras.losses.KLDivergence())
    else:
        term = distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=keras.losses.KLDivergence()
        )
    distiller = distillation.Distiller(
        teacher=teacher, student=student, distillation_losses=term
    )
    distiller.compile(
        optimizer=config["optimizer"],
        loss=config["loss"],
        metrics=config.get("metrics"),
    )
    return distiller


class _Progress:
    """One line per stage of the flow, with a bar of the stages done."""

    def __init__(self, verbose):
        self.verbose = verbose
        self.count = 0

    def stage(self, name):
        self.count += 1
        if self.verbose:
            width = len(STAGES)
            bar = "=" * (self.count - 1) + ">" + "." * (width - self.count)
            print(
                f"collapse {min(self.count, width)}/{width} [{bar}] {name}", flush=True
            )

    def done(self, seconds):
        if self.verbose:
            bar = "=" * len(STAGES)
            print(
                f"collapse {len(STAGES)}/{len(STAGES)} [{bar}] done in "
                f"{math.ceil(seconds)} s",
                flush=True,
            )
