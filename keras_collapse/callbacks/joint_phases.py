"""When the joint method's phases fall (search, polarize, recovery, as
shares of the fit's training steps, or of its epochs when the steps are
unknown), and how fast the gates move: the gates' learning-rate scale and
the budget controller's pace."""

import math

import keras

from keras_collapse.callbacks.budget import Multiplier

SEARCH, POLARIZE, RECOVERY = "search", "polarize", "recovery"
# An "auto" gate scale lets a gate at full speed cross [0, 1] this many times
# during the search: fast enough to settle, slow enough to follow the loss.
CROSSINGS = 2.0


class Phases:
    """The phase plan of `JointLinearizationCallback`."""

    def _plan(self, epoch):
        """Steps per epoch, the phase boundaries, and the gates' step size,
        from the fit's parameters (at the first epoch of this fit)."""
        steps = (self.params or {}).get("steps")
        epochs = (self.params or {}).get("epochs") or 1
        self._steps_per_epoch = steps
        total = steps * epochs if steps else None
        self._total = total
        if total:
            self._search_end = max(1, round(self.search * total))
            self._hard_step = max(
                self._search_end + 1, round((self.search + self.polarize) * total)
            )
        else:  # unknown length: by epochs
            self._search_end = self._hard_step = None
            self._search_epochs = max(1, round(self.search * epochs))
            self._hard_epoch = max(
                self._search_epochs + 1, round((self.search + self.polarize) * epochs)
            )
        search_steps = self._search_end or self._search_epochs * 100
        lr = self._learning_rate()
        if self.gate_lr_scale == "auto":
            scale = CROSSINGS / (search_steps * lr)
        else:
            scale = float(self.gate_lr_scale)
        self._scale = float(2.0 ** round(math.log2(scale)))
        self._lr = lr
        # The largest move of a gate per Adam step, and the controller's pace.
        self._adam_step = self._scale * lr
        # At a full deficit the multiplier reaches a whole Adam step's pull
        # in a quarter of the search.
        self.multiplier = Multiplier(4.0 / search_steps)
        # Strong enough to cross [0, 1] in half the polarization (the set is
        # fixed for its second half) against a full Adam step the other way.
        self._push = 4.0 / max(1, (self._hard_step or 100) - (self._search_end or 0))
        self._step = epoch * steps if steps else 0

    def _learning_rate(self):
        optimizer = getattr(self._trainer, "optimizer", None)
        rate = getattr(optimizer, "learning_rate", None)
        try:
            value = float(keras.ops.convert_to_numpy(rate))
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"{self.method} sets the gates' step from the optimizer's learning "
                f"rate, which it could not read as a number > 0 (received "
                f"{rate!r}): pass `gate_lr_scale=` as a number."
            )
        return value

    def _phase_at(self, step, epoch):
        if self._total:
            if step < self._search_end:
                return SEARCH
            return POLARIZE if step < self._hard_step else RECOVERY
        if epoch < self._search_epochs:
            return SEARCH
        return POLARIZE if epoch < self._hard_epoch else RECOVERY

    def _settling(self):
        if not self._total:
            return self._epoch < (self._search_epochs + self._hard_epoch) / 2
        return self._step < (self._search_end + self._hard_step) / 2
