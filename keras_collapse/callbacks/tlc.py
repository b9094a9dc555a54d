"""TLCCallback: Till the Layers Collapse, on the shared decision engine."""

from keras_collapse.callbacks.arguments import check_samples
from keras_collapse.callbacks.engine import LinearizationCallback
from keras_collapse.checks import check_bool
from keras_collapse.checks import check_choice
from keras_collapse.scores import scorers

RANKINGS = ("batchnorm", "statistics", "validation", "random")


class TLCCallback(LinearizationCallback):
    """Till the Layers Collapse: linearizes activations during `fit`, one at
    a time, and undoes any that costs accuracy.

    The candidates are ranked by TLC's Gaussian ON/OFF model of each
    channel's pre-activation, `z ~ N(mean, std^2)`; a layer whose channels
    are all surely ON or surely OFF is the safest to linearize. Where the
    mean and std come from:

    - **No data** (the default): a BatchNormalization's beta and gamma
      (`analyze_batchnorm`); only BN-paired activations are candidates, and
      the guard reads the monitored metric in `logs`.
    - **`data=x_sample`**: measured over a fixed sample of the inputs
      (`ActivationStatistics.gaussian_states`), so models without
      BatchNormalization and activations after a residual `Add` get scores
      too; the BN moving statistics are re-estimated on the sample before
      every judgment and at the end.
    - **`validation_data=(x, y)`**: each candidate is linearized in turn on
      a fixed labelled sample and the one whose loss rises least goes first
      (TLC's measured ranking); the guard is the accuracy (else the loss)
      measured on that sample.

    A layer is linearized the TLC way: eased in over `ramp_epochs` (its
    slope pulled to 1, its OFF channels' BN gamma and beta faded to zero),
    then locked to the identity with the OFF channels held at zero.
    Schedule, guard, rollback, records and the remaining arguments are the
    shared engine's: see `LinearizationCallback`. Follow with
    `keras_collapse.surgery` to merge the linearized layers away.

    A user without data who trains with the default (data-free) ranking:
    call `keras_collapse.recalibrate_batchnorm(model, x_train[:4096])` after
    `fit` (or run a last epoch) so that the BN statistics catch up with the
    change before evaluating or `surgery`.

    Args:
        validation_data: labelled `(x, y)` / `(x, y, sample_weight)` arrays
            or batches. Defaults to `None`.
        data: unlabelled inputs (or `(x, y)`, labels ignored) for measured
            statistics. Defaults to `None`.
        ranking: "auto", "batchnorm", "statistics", "validation", "random",
            or a scorer of your own (a `keras_collapse.scores.Scorer` or a
            callable). "auto" is "validation" with `validation_data`, else
            "statistics" with `data`, else "batchnorm". Defaults to `"auto"`.
        multi_removal: bool, with the validation ranking: also linearize, at
            the same decision, every other candidate whose measured loss does
            not rise (TLC's multi-removal). Defaults to `False`.
        samples: int >= 1, the rows of the fixed samples drawn from `data`
            and `validation_data` (formerly `validation_samples`, still
            accepted with a DeprecationWarning). Defaults to `1024`.
        **kwargs: the engine's arguments: `warmup_epochs` (1), `interval`
            (2), `ramp_epochs` (1), `monitor`, `tolerance`, `patience` (3),
            `max_layers`, `candidates`, `recalibrate`, `batch_size`, `seed`,
            `verbose`, `objective` ("activations"; "depth" / "latency" take
            merge units only), `exact`, `cost_model`.

    Raises:
        ValueError: for bad arguments; at `on_train_begin`, if the model has
            no collapsible activation (call `keras_collapse.make_collapsible`
            first), `candidates` names something else, or the data do not
            fit the model.

    Example:

        model = keras_collapse.make_collapsible(model)
        tlc = keras_collapse.TLCCallback()
        model.fit(x, y, epochs=20, callbacks=[tlc])
        tlc.linearized            # ['re_lu_7', 're_lu_3', ...]
        small = keras_collapse.surgery(model)

    Reference:
        Till the Layers Collapse, arXiv 2412.15077.
    """

    method = "TLCCallback"
    log_prefix = "tlc"

    def __init__(
        self,
        validation_data=None,
        *,
        data=None,
        ranking="auto",
        multi_removal=False,
        samples=None,
        **kwargs,
    ):
        samples = check_samples(samples, kwargs, self.method)
        if isinstance(ranking, str):
            check_choice("ranking", ranking, ("auto", *RANKINGS), what="or a scorer")
        check_bool("multi_removal", multi_removal)
        if multi_removal and validation_data is None:
            raise ValueError(
                "`multi_removal=True` linearizes the candidates whose measured "
                "loss does not rise: pass `validation_data=(x, y)` too."
            )
        if ranking == "auto":
            ranking = (
                "validation"
                if validation_data is not None
                else "statistics"
                if data is not None
                else "batchnorm"
            )
        self.ranking = ranking
        self.multi_removal = multi_removal
        scorer = (
            {
                "batchnorm": scorers.BatchNormScorer,
                "statistics": scorers.GaussianScorer,
                "validation": lambda: scorers.LossScorer(multi_removal),
                "random": scorers.RandomScorer,
            }.get(ranking, lambda: ranking)
            if isinstance(ranking, str)
            else None
        )
        super().__init__(
            scorer() if scorer is not None else ranking,
            data=data,
            validation_data=validation_data,
            samples=samples,
            **kwargs,
        )

    @property
    def validation_samples(self):
        """The old name of `samples`."""
        return self.samples

    def _unscorable_message(self):
        return (
            "TLCCallback: no collapsible activation of model "
            f"'{self.model.name}' reads a BatchNormalization, so there are no "
            "BN statistics to rank them by; this callback does nothing. "
            "Options: pass `data=x_sample` to measure the statistics over "
            "data (TLC for models without BN), `validation_data=(x, y)` to "
            "rank them by measured loss, use `EASIERCallback(data)`, or train "
            "with `LinearityRegularizer` and call `lock_near_linear` "
            "(LayerCollapse)."
        )

    def analysis(self):
        """The model's current `BatchNormAnalysis`."""
        from keras_collapse.scores.batchnorm import analyze_pairs
        from keras_collapse.scores.pairs import find_pairs

        return analyze_pairs(find_pairs(self.model))
