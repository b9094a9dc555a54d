"""The greedy engine's decision loop: when a decision falls (at an epoch's
end or between batches), what it may choose from, and the tries of one
decision (a change the pre-check refuses is undone and the next
candidate tried)."""

import math
import warnings

from keras_collapse.callbacks.context import DecisionContext
from keras_collapse.callbacks.selection import units_of


class Decision:
    """What a method's `make_change` gets at one decision.

    Attributes:
        epoch: int, the 0-based epoch whose end this is.
        pool: list of candidate `Pair`s (not linear, not kept, allowed; with
            objective "depth" / "latency", only members of merge units).
        units: list of `MergeUnit`s that buy something under the objective,
            or None for "activations".
        found: the `MergeUnits` the units come from (to price a group), or
            None.
        room: how many more activations may be linearized (`max_layers`).
        context: a `DecisionContext` (model, samples, statistics, ...).
    """

    def __init__(self, epoch, pool, units, found, room, context):
        self.epoch = epoch
        self.pool = pool
        self.units = units
        self.found = found
        self.room = room
        self.context = context
        self.stop_reason = None
        self.wait_reason = None

    def stop(self, reason):
        """Tells the engine to make no more changes, with the reason; returns
        None, for `return decision.stop("...")`."""
        self.stop_reason = reason
        return None

    def wait(self, reason):
        """No change at this decision, but ask again at the next (what is
        missing may come with training); returns None."""
        self.wait_reason = reason
        return None


class DecisionLoop:
    """The decision points of `LinearizationCallback`: finish the ramp,
    judge the last change (`Judging`), build the next `Decision` and ask
    the method's `make_change`."""

    def _step(self, epoch, logs):
        self._last_epoch = epoch
        if not self.schedule.is_decision(epoch):
            self._value(epoch, logs, final=False)
            return
        if self.schedule.in_steps:
            self._since_warmup = 0
        self._decision_point(epoch, logs, self._steps_left(epoch, None))

    def _steps_left(self, epoch, batch):
        """Training steps left in the fit after `batch` of `epoch` (after the
        epoch with `batch=None`), or None when the fit's length is unknown."""
        steps, epochs = (
            (self.params or {}).get("steps"),
            (self.params or {}).get("epochs"),
        )
        if not steps or epochs is None:
            return None
        done_in_epoch = steps if batch is None else batch + 1
        return (epochs - epoch - 1) * steps + steps - done_in_epoch

    def _decision_point(self, epoch, logs, steps_left):
        """Finishes the ramp, judges the last change, makes the next one."""
        self._last_epoch = epoch
        if self._ramp is not None:
            self._ramp.finish()
        self._recalibrate()
        value = self._value(epoch, logs, final=True)
        if value is None:
            return
        if self._pending is not None:
            self._judge(epoch, value)
        elif self._best is None or self.guard.better(value, self._best) == value:
            self._best = value
        if self.schedule.in_steps:
            room = self.schedule.room_after_step(steps_left)
        else:
            room = self.schedule.room_after(epoch, (self.params or {}).get("epochs"))
        if not self._stopped and room:
            self._decide(epoch)

    def _decide(self, epoch):
        """Builds the decision, takes the snapshot, asks `make_change`."""
        if self.max_layers is not None and len(self.linearized) >= self.max_layers:
            return self._stop(epoch, f"max_layers={self.max_layers} reached")
        pool = self._candidate_pairs()
        if not pool:
            return self._stop(epoch, "no candidate left")
        units = found = None
        if self.objective != "activations":
            found = units_of(
                self.model, pool, exact=self.exact, cost_model=self.cost_model
            )
            units = found.for_objective(self.objective)
            members = {name for unit in units for name in unit.activations}
            pool = [p for p in pool if p.activation.name in members]
            if not pool:
                return self._stop(
                    epoch, f"no merge unit left under objective {self.objective!r}"
                )
        room = (
            math.inf
            if self.max_layers is None
            else self.max_layers - len(self.linearized)
        )
        context = DecisionContext(
            self.model,
            data=self._data,
            sample=self._sample,
            rng=self._rng,
            batch_size=self.batch_size,
            verbose=self.verbose,
            on_skip=lambda name, reason: self._skip(epoch, name, reason),
            graph=self._graph,
            settle=self._settle,
        )
        refused = set()
        for _ in range(self.patience):
            tried = [p for p in pool if p.activation.name not in refused]
            if not tried:
                return self._stop(epoch, "every candidate refused by the pre-check")
            decision = Decision(epoch, tried, units, found, room, context)
            change, snapshot = self._try(decision)
            if change is None or not self._refused(epoch, change, snapshot):
                break
            refused.update(change.layers)
        else:
            return None  # `patience` refusals: no change at this decision
        if change is None and decision.wait_reason:
            if not self._warned_wait:
                self._warned_wait = True
                warnings.warn(f"{self.method}: {decision.wait_reason}.", stacklevel=3)
            self._event(epoch, "waited", [], reason=decision.wait_reason)
            return None
        if change is None:
            return self._stop(epoch, decision.stop_reason or "no change made")
        change.epoch, change.reference, change.snapshot = epoch, self._best, snapshot
        self._pending = change
        self.linearized.extend(change.layers)
        self._event(
            epoch,
            change.action,
            change.layers,
            message=change.message,
            **change.details,
        )

    def _candidate_pairs(self):
        done = set(self.linearized) | set(self.kept)
        allowed = set(self.candidates) if self.candidates is not None else None
        return [
            p
            for p in self._pairs
            if p.activation.name not in done
            and (allowed is None or p.activation.name in allowed)
            and not p.activation.is_linear
            and (not self.scorer.batchnorm_only or p.batchnorm is not None)
        ]
