"""EASIERCallback: entropy-guided linearization, on the shared engine."""

from keras_collapse.callbacks.engine import LinearizationCallback
from keras_collapse.scores.scorers import EntropyScorer


class EASIERCallback(LinearizationCallback):
    """EASIER: linearizes, during `fit`, the activation whose ON/OFF states
    over data have the lowest entropy, and undoes any that costs accuracy.

    At each decision the entropy of every candidate (`activation_statistics`
    in inference mode, after the BN moving statistics are re-estimated on the
    sample) is measured on a fixed sample of `data`; the lowest-entropy
    activation is linearized, together with every activation whose entropy
    is (numerically) zero. The channels that were never ON in the sample are
    zeroed at their BatchNormalization, so `surgery` cuts them: this trusts
    the sample (a channel ON only on inputs the sample lacks is lost), so
    give it a few thousand representative rows. A change is eased in over
    `ramp_epochs` and then locked.

    The guard is the accuracy measured on a fixed sample of
    `validation_data` when given, else the monitored metric in `logs`
    (`val_accuracy` if `fit` has validation data). Schedule, guard,
    rollback and records are the shared engine's: see
    `LinearizationCallback`.

    Args:
        data: the inputs (arrays `x` or `(x, y)`, labels ignored; tf.data,
            PyDataset, DataLoader or any iterable of batches).
        validation_data: labelled `(x, y)` data for the guard, or None.
            Defaults to `None`.
        samples: int >= 1, the rows of the fixed samples. Defaults to
            `1024`.
        zero_entropy: float >= 0, the entropy (bits) at or below which a
            layer is linear on the sample and taken along. Defaults to
            `1e-6`.
        **kwargs: the engine's arguments: `warmup_epochs` (1), `interval`
            (2), `ramp_epochs` (1), `monitor`, `tolerance`, `patience` (3),
            `max_layers`, `candidates`, `recalibrate`, `batch_size`, `seed`,
            `verbose`, `objective` ("activations"; "depth" / "latency" take
            merge units only), `exact`, `cost_model`.

    Example:

        easier = keras_collapse.EASIERCallback(data=x_train[:2048])
        model.fit(x_train, y_train, epochs=12, callbacks=[easier])
        easier.linearized
        small = keras_collapse.surgery(model)

    Reference:
        EASIER, arXiv 2404.18949.
    """

    method = "EASIERCallback"
    log_prefix = "easier"

    def __init__(
        self, data, validation_data=None, *, samples=1024, zero_entropy=1e-6, **kwargs
    ):
        if data is None:
            raise ValueError(
                "EASIERCallback measures ON/OFF entropy over data: pass "
                "`data=x_sample` (a few thousand training inputs). Received: "
                "data=None"
            )
        self.zero_entropy = zero_entropy
        super().__init__(
            EntropyScorer(zero_entropy),
            data=data,
            validation_data=validation_data,
            samples=samples,
            **kwargs,
        )
