"""The joint method's gates (each candidate's slope, in [0, 1]): pulled
toward the budget while searching, pushed to 0 or 1 while polarizing, then
made exact in the hard set (the chosen locked to the identity, the rest
pinned at their activation)."""

import numpy as np

from keras_collapse.actions.linearize import rebuild_train_function
from keras_collapse.callbacks.joint_phases import RECOVERY
from keras_collapse.collapsible import sync_training_state

# The hard set's marks on a gate's range: a saved model carries them, so a
# fit resumed after the hard set finds the set in the model.
CHOSEN, PINNED = (1.0, 1.0), (0.0, 0.0)


class Gates:
    """The gates of `JointLinearizationCallback`: `chosen`, `set_changes`."""

    def _gates(self):
        return np.array([float(np.mean(layer.alpha_numpy())) for layer in self._layers])

    def _set_gates(self, gates, new):
        for layer, old, value in zip(self._layers, gates, new):
            if value != old:
                alpha = layer.alpha_numpy() + (value - old)
                layer.set_alpha(np.clip(alpha, 0.0, 1.0))

    def _pull(self, gates):
        """One step of the budget controller: the multiplier follows the
        budget's relative deficit; every gate moves up by the multiplier's
        share of an Adam step, weighted by what it buys and the prior."""
        value = self.multiplier.update(self.budget.soft(gates), self.budget.needed)
        weight = self.budget.weights
        if self._prior_ranks is not None:
            weight = weight * (1.5 - self._prior_ranks)
        moved = np.clip(gates + value * self._adam_step * weight, 0.0, 1.0)
        self._set_gates(gates, moved)

    def _polarize(self, gates):
        """The current best set pushed to 1, the rest to 0. The set may
        change during the first half of the polarization only, so that
        every gate has reached 0 or 1 when the set is made exact."""
        if not self.chosen or self._settling():
            chosen = self._select(gates)
            if chosen != self.chosen:
                if self.chosen:
                    self.set_changes += 1
                self.chosen = chosen
        inside = np.array([layer.name in set(self.chosen) for layer in self._layers])
        moved = np.clip(gates + np.where(inside, self._push, -self._push), 0.0, 1.0)
        self._set_gates(gates, moved)

    def _select(self, gates):
        return self.budget.select(gates, self._prior_ranks)

    # ----------------------------------------------------------- hard set
    def _hard_set(self, epoch):
        """Exactly the chosen set linear (locked), the rest pinned at their
        activation; BatchNorm re-estimated; the train step retraced."""
        sync_training_state(self._trainer)
        gates = self._gates()
        chosen = self.budget.priced(self.chosen or self._select(gates), gates)
        if self.chosen and chosen != self.chosen:
            self.set_changes += 1
        self.chosen = chosen
        for layer in self._layers:
            if layer.name in chosen:
                layer.set_alpha_range(CHOSEN)
                layer.lock_linear()
            else:
                layer.set_alpha_range(PINNED)
        rebuild_train_function(self._trainer)
        self._recalibrate()
        self._hard = epoch
        self._phase = RECOVERY
        self.linearized = list(chosen)
        self.kept = [layer.name for layer in self._layers if layer.name not in chosen]
        details = {
            "gates": {layer.name: float(g) for layer, g in zip(self._layers, gates)},
            "set_changes": self.set_changes,
            "recalibrated": bool(self._recalibrator),
        }
        if self.budget.units is not None:
            unit = self.budget.found.evaluate(chosen)
            details.update(depth=unit.depth, latency=unit.latency, macs=unit.macs)
        self._event(epoch, "hard set", chosen, **details)

    def _recalibrate(self):
        if self._recalibrator is not None:
            sync_training_state(self._trainer)
            self._recalibrator.run(self._sample, batch_size=self.batch_size)
