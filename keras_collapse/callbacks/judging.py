"""How the greedy engine keeps or takes back a change: the snapshot
before it, the pre-check's refusal at once, the guard's judgment at the
next decision, the rollback and the stop after `patience` of them."""

from keras_collapse.actions.linearize import rebuild_train_function
from keras_collapse.collapsible import sync_training_state


class Judging:
    """The rollback bookkeeping of `LinearizationCallback`: `linearized`,
    `kept`, `rollbacks` and the pending change."""

    def _try(self, decision):
        """`(change, snapshot)`: the weights now, then the method's change."""
        sync_training_state(self.model)
        snapshot = self.model.get_weights()
        if self._precheck is not None:
            self._precheck.before()
        return self.make_change(decision), snapshot

    def _refused(self, epoch, change, snapshot):
        """Measures `change` at once on the sample (its final state, for one
        eased in); undoes it and says so when the drop is past the
        tolerance."""
        if self._precheck is None:
            return False
        previewed = change.preview() if change.preview is not None else []
        self._recalibrate()  # judged as the guard judges: on settled statistics
        value, passes = self._precheck.after()
        sync_training_state(self.model)
        for record in reversed(previewed):
            record.undo()
        if passes:
            return False
        for record in change.undo_records():
            record.undo()
        self.model.set_weights(snapshot)
        rebuild_train_function(self.model)
        self._ramp = None
        # Not kept nonlinear: a refusal cost no epoch, and a unit refused at
        # one decision can pass at a later one, once the model has moved on
        # (on the digits MobileNetV2, JAX, TLC depth 24 -> 20 kept, 24 -> 18
        # retried). Within this decision it is not tried again.
        self._event(
            epoch,
            "refused",
            change.layers,
            value=value,
            best=self._precheck.reference,
            reason=f"the pre-check's {self._precheck.key} fell too far at once",
        )
        return True

    def _judge(self, epoch, value):
        pending, self._pending = self._pending, None
        reference = pending.reference
        if value is not None and self.guard.within(value, reference):
            self._rejections = 0
            self._best = (
                value if reference is None else self.guard.better(value, reference)
            )
            self._event(epoch, "accepted", pending.layers, value=value, best=reference)
        else:
            self._rollback(epoch, value, "the monitored value fell too far", pending)

    def _rollback(self, epoch, value, reason, pending=None):
        pending = pending or self._pending
        self._pending = None
        sync_training_state(self.model)
        for record in pending.undo_records():
            record.undo()
        self.model.set_weights(pending.snapshot)
        rebuild_train_function(self.model)
        self.rollbacks += 1
        self._rejections += 1
        self.pace.rolled_back()
        for name in pending.layers:
            self.linearized.remove(name)
            if not pending.retry:
                self.kept.append(name)
        self._event(
            epoch,
            "rolled back",
            pending.layers,
            value=value,
            best=pending.reference,
            reason=reason,
            retried=pending.retry,
        )
        if self._rejections >= self.patience:
            self._stop(epoch, f"{self._rejections} rollbacks in a row (patience)")

    def _stop(self, epoch, reason):
        self._stopped = True
        self._event(epoch, "stopped", [], reason=reason)

    def _skip(self, epoch, name, reason):
        self.kept.append(name)
        self._event(epoch, "skipped", [name], reason=reason)

    def _recalibrate(self):
        if self._recalibrator is None:
            return
        recalibrator, x = self._recalibrator
        sync_training_state(self.model)
        recalibrator.run(x, batch_size=self.batch_size)
