"""What the greedy engine's guard reads: its own measurement on the
labelled sample, or a metric in the epoch's `logs`."""

import warnings

from keras_collapse.callbacks.context import evaluate_sample
from keras_collapse.callbacks.guard import accuracy_key


class Monitoring:
    """The monitored value of `LinearizationCallback` (`monitored`, the key
    `guard` resolved, and the last value read)."""

    def _value(self, epoch, logs, final):
        """The monitored value now (None when it cannot be read)."""
        if self._measures_itself():
            if not final:
                return None
            result = self._evaluate()
            if self.monitored is None:
                key = accuracy_key(result) or "loss"
                self.guard.resolve(key, self.model)
            self._measured = float(result[self.monitored])
            self._last_value = self._measured
            return self._measured
        if not logs:
            return self._last_value
        if self.monitored is None:
            key = self._resolve_monitor(logs)
            if key is None:
                return None
            self.guard.resolve(key, self.model)
        value = logs.get(self.monitored)
        if value is None:
            return None
        self._last_value = float(value)
        return self._last_value

    def _resolve_monitor(self, logs):
        if self.monitor != "auto":
            if self.monitor not in logs:
                self._active = False
                warnings.warn(
                    f"{self.method} monitors '{self.monitor}', which is not in "
                    f"the logs (available: {sorted(logs)}); it makes no change "
                    "to the model without it.",
                    stacklevel=3,
                )
                return None
            return self.monitor
        accuracy = accuracy_key(logs, prefix="val_") or accuracy_key(logs)
        for key in (accuracy, "val_loss", "loss"):
            if key is not None and key in logs:
                return key
        self._active = False
        warnings.warn(
            f"{self.method} found neither an accuracy nor a loss in the logs "
            f"(available: {sorted(logs)}); it makes no change to the model.",
            stacklevel=3,
        )
        return None

    def _evaluate(self):
        return evaluate_sample(
            self.model, self._sample, self.batch_size, settle=self._settle_to_measure
        )

    def _measures_itself(self):
        """Whether the guard is the callback's own measurement on the
        labelled sample (else a metric read from `logs`)."""
        return getattr(self, "_sample", None) is not None and self.monitor == "auto"
