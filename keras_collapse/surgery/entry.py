"""`surgery`: rebuild a model with its linear runs merged, and prove it."""

import keras

from keras_collapse.checks import check_bool
from keras_collapse.checks import check_model
from keras_collapse.checks import check_number
from keras_collapse.graph import Graph
from keras_collapse.graph.sample_inputs import random_inputs
from keras_collapse.graph.sample_inputs import read_sample_inputs
from keras_collapse.masks import strip_masks
from keras_collapse.report.stats import model_stats
from keras_collapse.report.surgery_report import SurgeryReport
from keras_collapse.surgery.cost_models import MacCostModel
from keras_collapse.surgery.passes.journal import Journal
from keras_collapse.surgery.passes.pipeline import simplify
from keras_collapse.surgery.passes.plain import restore_plain_activations
from keras_collapse.surgery.passes.safe_forms import use_safe_forms
from keras_collapse.surgery.verify import VerificationError
from keras_collapse.surgery.verify import verify_equivalent


def surgery(
    model,
    *,
    merge=True,
    cut_dead_channels=True,
    exact=True,
    cost_model=None,
    verify=True,
    tolerance=1e-5,
    sample_inputs=None,
    input_shape=None,
    return_report=False,
    verbose=False,
):
    """Returns a new, shallower model computing what `model` computes.

    The input model is never modified. In order, the surgery:
    1. removes layers that are the identity at inference (Dropout and friends,
       `Identity`, `Activation("linear")`) and collapsible activations that
       are linear (alpha = 1, or locked by `lock_linear` / a callback);
    2. folds BatchNormalization into the adjacent Conv/Dense where exact;
    3. cuts channels that are exactly zero (e.g. a TLC OFF channel, whose BN
       has gamma = beta = 0) from their producer and every consumer;
    4. merges runs of linear layers (Dense∘Dense, Conv∘Conv, depthwise∘1x1,
       1x1∘depthwise, ...) where the merged layer costs no more than the run
       (`cost_model`), and absorbs identity / 1x1 residual `Add`s into the
       merged kernel; a merge's border-aware bias is read from a constant
       channel the conv's input producer emits (`passes/bias_channels`)
       where the cost model prices that below a bias layer, else kept as a
       layer;
    5. turns the remaining collapsible activations back into plain Keras
       layers (ReLU, PReLU, Activation; a partial blend into Activation,
       Rescaling and Add), and a remaining border-aware bias into a
       `Rescaling` offset, so the result loads with plain Keras, in a
       process that never imports keras_collapse; a pattern a backend is
       known to compile wrongly is emitted in an equivalent form it computes
       right (`passes/safe_forms`);
    6. keeps the model's outside: input and output names, output dtypes.

    Args:
        model: a Functional or Sequential `keras.Model` (nested models are
            flattened). Subclassed models cannot be rebuilt.
        merge: bool, whether to merge linear runs and residuals (step 4).
            `merge=False, cut_dead_channels=False` gives the BN-folded model,
            the baseline to compare against. Defaults to `True`.
        cut_dead_channels: bool, step 3. Defaults to `True`.
        exact: bool. If True, only merges that are exact everywhere are
            taken. If False, "same"-padded k x k into k x k merges, exact only
            away from the image border, are allowed (when the cost model
            agrees) and the measured deviation is reported. Defaults to `True`.
        cost_model: callable `(kind, kernel_shape, output_positions) -> cost`;
            see `MacCostModel`. Defaults to `MacCostModel()` (MACs).
        verify: bool. Run both models and raise `VerificationError` if they
            differ by more than `tolerance` (exact mode), or record the
            deviation (inexact mode). The result runs eagerly and compiled
            (`predict_on_batch`, what `predict` and `export` trace; compiled
            only on JAX). A float16 / bfloat16 model is judged against its
            own float32 copy, with the tolerance raised to what the policy
            can represent (see `Verification`). Defaults to `True`.
        tolerance: float, largest allowed `max|a - b| / max|a|` over the
            outputs. Defaults to `1e-5`.
        sample_inputs: real inputs to verify on (arrays in the structure the
            model takes, `(x, y)` arrays, a list of batches, a dataset; at
            most 64 rows are used). Defaults to `None`: random inputs that fit
            the model (ids within each `Embedding`'s `input_dim`, padding
            masks, its fixed batch size).
        input_shape: shape (without batch) to use where the model's input has
            unknown sizes, for verification; or a list, one per input.
            Defaults to `None` (unknown sizes become 32).
        return_report: bool. Return `(model, SurgeryReport)`. Defaults to
            `False`.
        verbose: bool. Print the report. Defaults to `False`.

    Returns:
        The new `keras.Model`, or `(model, report)` with `return_report=True`.

    Raises:
        ValueError: if the model cannot be read (subclassed, unbuilt) or an
            argument is invalid.
        VerificationError: if `verify` finds the result differs in exact mode.

    Example:

    >>> x = keras.Input((8,))
    >>> h = keras.layers.BatchNormalization()(keras.layers.Dense(16)(x))
    >>> model = keras.Model(x, keras.layers.Dense(4)(h))
    >>> small, report = keras_collapse.surgery(model, return_report=True)
    >>> report.count("fold_bn"), report.count("merge")
    (1, 1)
    >>> report.before.depth, report.after.depth
    (2, 1)
    >>> print(report)  # depth, activations, params, MACs before/after
    Surgery (exact): ...
    """
    check_model("model", model)
    for name, value in (
        ("merge", merge),
        ("cut_dead_channels", cut_dead_channels),
        ("exact", exact),
        ("verify", verify),
        ("return_report", return_report),
        ("verbose", verbose),
    ):
        check_bool(name, value)
    check_number("tolerance", tolerance, 0, low_open=True)
    cost_model = cost_model or MacCostModel()
    if not callable(cost_model):
        raise ValueError(
            "`cost_model` must be callable as cost_model(kind, kernel_shape, "
            f"output_positions). Received: {cost_model!r}"
        )
    graph = Graph.from_model(model)
    journal = Journal()
    for node in graph.layer_nodes():
        if not graph.has_finite_weights(node):
            journal.skip(
                "non_finite",
                [node.layer.name],
                "weights hold NaN or inf: left as they are, not folded or merged",
            )
    for opaque in graph.opaque:
        journal.skip(
            "opaque",
            [opaque.name],
            f"{opaque.class_name} kept whole: {opaque.reason}; teach it with "
            "keras_collapse.register_unroller",
        )
    simplify(
        graph,
        journal,
        cost_model=cost_model,
        exact=exact,
        merge=merge,
        cut_dead_channels=cut_dead_channels,
    )
    restore_plain_activations(graph, journal)
    use_safe_forms(graph, journal)
    result = graph.to_model(name=model.name)
    # Masks that hold pruned / OFF weights at zero (`ZeroMask`) are training
    # state: the result would need keras_collapse to load, and a pass that
    # builds a layer from a masked one's config (a merge, a cut) would carry
    # a mask of the wrong shape. Dropped here, once, on the new model's
    # layers, whichever way each was made (cloned, or built by a pass);
    # `Graph.to_model` itself keeps them, as `make_collapsible` must.
    strip_masks(result)

    deviation = verification = None
    if verify:
        if sample_inputs is not None:
            inputs, kind = read_sample_inputs(model, sample_inputs, 64), "sample"
        else:
            inputs, kind = random_inputs(model, input_shape), "random"
        verification = verify_equivalent(
            model, result, inputs, tolerance, inputs_kind=kind
        )
        deviation = verification.deviation
        if exact and not verification.passed:
            eager = verification.paths.get("eager")
            if eager is not None and eager <= verification.tolerance:
                raise VerificationError(
                    f"The surgery result computes what model '{model.name}' "
                    "computes when called eagerly but not when compiled "
                    f"(`predict`, `export`): {verification.describe()}. The "
                    f"{keras.backend.backend()} backend compiles a pattern of "
                    "the result wrongly; please report it with the model so "
                    "keras_collapse can emit another form. `surgery(..., "
                    "verify=False)` skips the check."
                )
            raise VerificationError(
                f"The surgery result differs from model '{model.name}': "
                f"{verification.describe()}. This is a bug in keras_collapse; "
                "please report it with the model. `surgery(..., verify=False)` "
                "skips the check."
            )
    report = SurgeryReport(
        before=model_stats(model, input_shape=input_shape),
        after=model_stats(result, input_shape=input_shape),
        done=journal.done,
        skipped=journal.skipped,
        exact=exact,
        deviation=deviation,
        tolerance=verification.tolerance if verification else tolerance,
        models=(model, result),
        verification=verification,
    )
    if verbose:
        print(report)
    return (result, report) if return_report else result
