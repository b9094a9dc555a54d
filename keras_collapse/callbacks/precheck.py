"""A change judged before it costs an epoch: its immediate effect on a fixed
sample, measured with one forward pass."""

import keras
import numpy as np

from keras_collapse.callbacks.context import evaluate_sample
from keras_collapse.callbacks.guard import accuracy_key
from keras_collapse.callbacks.guard import within
from keras_collapse.collapsible import sync_training_state

# How many times the guard's tolerance a change may cost at once: before its
# recovery a change costs more than the guard accepts after it (2-8 points
# of accuracy for an epoch on the comparison nets); the pre-check is there
# to catch the changes that wreck the model (0.86 -> 0.18).
SLACK = 5


class Precheck:
    """Measures a change's immediate effect on a fixed sample.

    With a labelled sample: the model's accuracy on it (else its loss), the
    drop allowed `SLACK` times the guard's (absolute when maximized,
    relative when minimized). With inputs only: how many of the sample's
    predictions (the arg-max of the first output; for one-unit outputs, the
    outputs within 5 % of their scale) the change leaves as they were, as a
    fraction; `SLACK` times the guard's tolerance (0.02) of them may change.

    Args:
        model: the training model.
        sample: `(x, y, w)` or None.
        data: inputs `x`, or None (used when there is no sample).
        tolerance: the guard's tolerance, or None for the defaults.
        batch_size: int.
        trainer: the model `fit` runs, whose state is synced first.
        own_tolerance: float or None, the drop allowed, instead of `SLACK`
            times the guard's.
        settle: a callable returning a context manager within which the BN
            statistics are settled (`BatchNormRecalibrator.settled`), or
            None. When given, each measurement on the labelled sample is
            made within it: the engine passes one when it has no `data` to
            re-estimate the statistics on for good.
    """

    def __init__(
        self,
        model,
        sample,
        data,
        tolerance,
        batch_size,
        trainer=None,
        own_tolerance=None,
        settle=None,
    ):
        self.model = model
        self.trainer = trainer if trainer is not None else model
        self.sample = sample
        self.data = data
        self.tolerance = tolerance
        self.own_tolerance = own_tolerance
        self.batch_size = batch_size
        self.settle = settle
        self.key = None
        self._reference = None

    @property
    def active(self):
        return self.sample is not None or self.data is not None

    def before(self):
        """Measures the model as it is, before a change."""
        self._reference = self._measure(reference=True)
        return self._reference

    def after(self):
        """`(value, passes)`: the model as it is now, against `before()`."""
        value = self._measure(reference=False)
        return value, self._passes(value, self._reference)

    @property
    def reference(self):
        """The value measured by the last `before()`."""
        return self._reference

    def _measure(self, reference):
        if self.sample is not None:
            result = evaluate_sample(
                self.model, self.sample, self.batch_size, self.trainer, self.settle
            )
            self.key = self.key or accuracy_key(result) or "loss"
            return float(result[self.key])
        self.key = "unchanged predictions"
        sync_training_state(self.trainer)
        out = keras.tree.flatten(
            self.model.predict(self.data, batch_size=self.batch_size, verbose=0)
        )[0]
        out = np.asarray(out, np.float64)
        if reference:
            self._outputs = out
            return 1.0
        if out.ndim >= 2 and out.shape[-1] > 1:
            return float(np.mean(np.argmax(out, -1) == np.argmax(self._outputs, -1)))
        scale = np.sqrt(np.mean(self._outputs**2)) or 1.0
        return float(np.mean(np.abs(out - self._outputs) <= 0.05 * scale))

    def _maximize(self):
        return self.key != "loss" and not self.key.endswith("loss")

    def _passes(self, value, reference):
        if not np.isfinite(value):
            return False
        if self.own_tolerance is not None:
            return within(value, reference, self._maximize(), self.own_tolerance)
        return within(value, reference, self._maximize(), self.tolerance, SLACK)
