"""The decision engine the greedy linearization callbacks share.

`LinearizationCallback` runs the loop: at each decision (`schedule`), judge
the last `Change` (`guard`; roll it back if it cost too much), then ask the
method for the next one through its one hook, `make_change`. The callback
is put together from its parts: the set-up at train begin (`preparation`),
the decision loop (`decisions`), keeping or taking back a change
(`judging`), the monitored value (`monitoring`) and the records (`events`).
What a decision may take (the pace, the merge units) is `selection`'s, what
a scorer may use `context`'s; what to linearize next is a scorer's
(`keras_collapse.scores.scorers`), what "linearize" does to the weights the
action's (`linearize`, `ramp`). TLCCallback and EASIERCallback only choose
a scorer; NEPENTHECallback overrides `make_change` (prune, and linearize
what reached zero entropy).
"""

import math

import keras
import numpy as np

from keras_collapse.actions.ramp import Ramp
from keras_collapse.callbacks.arguments import check_candidates
from keras_collapse.callbacks.arguments import check_cost_model
from keras_collapse.callbacks.arguments import check_data
from keras_collapse.callbacks.change import Change
from keras_collapse.callbacks.decisions import Decision  # noqa: F401 (its old home)
from keras_collapse.callbacks.decisions import DecisionLoop
from keras_collapse.callbacks.events import EventLog
from keras_collapse.callbacks.guard import Guard
from keras_collapse.callbacks.judging import Judging
from keras_collapse.callbacks.monitoring import Monitoring
from keras_collapse.callbacks.preparation import Preparation
from keras_collapse.callbacks.schedule import Schedule
from keras_collapse.callbacks.selection import Pace
from keras_collapse.callbacks.selection import check_pace  # noqa: F401
from keras_collapse.callbacks.selection import pick_units
from keras_collapse.checks import check_bool
from keras_collapse.checks import check_choice
from keras_collapse.checks import check_int
from keras_collapse.checks import check_number
from keras_collapse.scores.scorers import as_scorer
from keras_collapse.surgery.units import check_objective


class LinearizationCallback(
    DecisionLoop, Judging, Monitoring, Preparation, EventLog, keras.callbacks.Callback
):
    """Linearizes collapsible activations during `fit`, one decision every
    `interval` epochs, guided by a scorer, and undoes what costs accuracy.

    The shared policy of `TLCCallback`, `EASIERCallback`,
    `NEPENTHECallback` and custom methods: pass a scorer (a
    `keras_collapse.scores.Scorer`, or a callable `(context, pairs) ->
    [(pair, value), ...]`, lowest value safest) to use your own ranking, or
    subclass and override `make_change` (the one hook a method needs) to
    change the model your own way.

    At every decision (after `warmup_epochs`, then every `interval` epochs,
    or every `interval_steps` training steps):

    1. With data, the BatchNormalization moving statistics are re-estimated
       on the sample (`recalibrate_batchnorm`): inference then reflects what
       the layers compute now, not a lagging average.
    2. The last change is judged: if the monitored value fell more than
       `tolerance` below its value when the change was made, every weight
       goes back to that moment (the epochs since are lost) and the layer is
       kept nonlinear (a group taken at a fractional `per_decision` returns
       to the candidates instead, and the pace halves).
    3. The scorer ranks the remaining candidates; the first (and whatever
       the scorer takes along) is linearized: eased in over `ramp_epochs`
       (the slope pulled to 1, OFF channels faded to zero), then locked, with
       OFF channels held at zero, or at once with `ramp_epochs=0`.

    After `patience` rollbacks in a row, `max_layers` linearizations, or when
    no candidate is left, the callback stops changing the model; no change is
    made so late that it cannot be judged. At the end of training the BN
    statistics are re-estimated once more (with data). Follow with
    `keras_collapse.surgery`.

    Logs each epoch `<prefix>_linearized`, `<prefix>_rollbacks` and, with a
    labelled sample, `<prefix>_val_<metric>` (list the callback before
    `CSVLogger` / `TensorBoard`); records `linearized`, `kept`, `rollbacks`,
    `monitored` and `events` (a list of dicts). One instance serves several
    `fit` calls.

    Args:
        scorer: a `Scorer` or callable, see above.
        data: inputs for statistics and BN re-estimation: arrays (`x` or
            `(x, y[, w])`), tf.data, PyDataset, DataLoader or iterable of
            batches; a fixed sample of `samples` rows is drawn once.
            Defaults to `None`.
        validation_data: labelled `(x, y[, w])` data (same kinds); a fixed
            sample of it guards the changes (its accuracy, else its loss)
            and feeds scorers that measure the loss. Defaults to `None`.
        warmup_epochs: int >= 1, epochs before the first decision.
            Defaults to `1`.
        interval: int >= 1, epochs between decisions. Defaults to `2`.
        interval_steps: int >= 1 or None: decide every that many training
            steps (batches) after the warm-up instead of every `interval`
            epochs, so that a short fine-tune holds more decisions than
            epochs. The guard then measures its own labelled sample between
            batches: it needs `validation_data` and `monitor="auto"`. A
            change is eased in over the first half of the steps when
            `ramp_epochs` > 0. The training metrics on the progress bar
            restart after each mid-epoch measurement (Keras' `evaluate`
            resets them). Defaults to `None`.
        ramp_epochs: int in [0, interval], the epochs over which a change is
            eased in (the rest of the interval is recovery before it is
            judged); 0 switches at once. Defaults to `1`.
        monitor: the guarded metric. "auto": with `validation_data`, the
            accuracy (else loss) measured on its sample; without, the first
            of `val_<accuracy>`, `<accuracy>`, `val_loss`, `loss` in `logs`.
            Any other name is read from `logs`. Defaults to `"auto"`.
        mode: "auto", "min" or "max", the monitored value's good direction,
            as in Keras' `EarlyStopping`: "auto" reads it from the metric
            (a loss is minimized; a compiled metric says its own direction:
            accuracy and AUC up) and raises a ValueError naming `mode` when
            the metric does not say. Defaults to `"auto"`.
        tolerance: float >= 0, the drop of the monitored value a change may
            cost and still be kept, measured at the next decision against
            the value when it was made: absolute when maximized (0.01 is one
            point of accuracy), relative when minimized (0.05 is 5 % more
            loss). Not `lock_near_linear`'s `tolerance` (a slope's distance
            from 1). Defaults to `None`: 0.02 and 0.05.
        patience: int >= 1, rollbacks in a row after which it stops.
            Defaults to `3`.
        max_layers: int or None, the most activations to linearize.
            Defaults to `None`.
        candidates: list of activation names that may be linearized, or
            None for all. Defaults to `None`.
        recalibrate: bool or "auto", whether to re-estimate the BN statistics
            (on the `data` sample; with True and only `validation_data`, on
            its inputs) before each judgment and at the end. "auto": when
            `data` is given. Unless False, a measurement on the labelled
            sample that no re-estimation precedes (a measured ranking's;
            without `data`, the guard's and the pre-check's) is made on
            statistics re-estimated for it (from `data`, else the sample's
            inputs) and put back afterwards; False measures on the moving
            statistics as they are. Defaults to `"auto"`.
        samples: int >= 1, the rows of the fixed samples drawn from `data`
            and `validation_data`. Defaults to `1024`.
        batch_size: int, the batch size of measurements. Defaults to `128`.
        seed: int, for the samples and random choices. Defaults to `0`.
        verbose: 0 or 1, a line per decision and a progress bar for long
            measurements. Defaults to `1`.
        objective: what a decision aims at. "activations": the scorer's
            safest activation (the papers' count). "depth" / "latency": the
            candidates are merge units (`keras_collapse.merge_units`: groups
            of activations whose joint linearization lets the surgery merge
            layers, from dry runs of its own passes), ranked by their
            members' combined score per layer removed ("depth") or per unit
            of cost saved ("latency", the `cost_model`'s); an activation
            that buys nothing is never taken. Defaults to `"activations"`.
        exact: bool, the surgery's `exact`, for the merge units. Defaults to
            `True`.
        cost_model: the surgery's cost model, for the merge units and the
            "latency" objective (`MacCostModel`, or a measured one).
            Defaults to `None`: `MacCostModel()`.
        precheck: "auto", True, False, or a float > 0. Before a change is
            kept, its immediate effect is measured on the fixed sample (one
            forward pass, the final state of a change eased in, after the BN
            re-estimation): with `validation_data`, its accuracy (else loss);
            with `data` only, the share of predictions left unchanged. A
            change that wrecks the model (a drop past the pre-check's
            tolerance) is refused at once (no epoch spent; event "refused")
            and the next candidate is tried, up to `patience` tries a
            decision; a refused candidate stays a candidate, tried again at
            later decisions (the model moves on). The tolerance is
            `precheck.SLACK` (5) times the guard's (0.1 accuracy, 10 % of
            the predictions, 25 % more loss by default): a change costs
            more before its recovery than the guard accepts after it. A
            float sets it (absolute when maximized, relative when
            minimized). "auto": on when there is a sample. Defaults to
            `"auto"`.
        per_decision: the pace: how many candidates (activations, or merge
            units with "depth" / "latency") one decision linearizes, judged
            and rolled back together; the scorer's `also_take` comes on top.
            An int >= 1: that many. A float in (0, 1): that fraction of the
            candidates left (at least one), halved after every rollback (as
            NEPENTHE halves its pruning fraction), and a rolled-back group
            returns to the candidates, so a short budget starts bold and
            backs off where the net objects. Defaults to `1` (the papers'
            pace).
    """

    method = "LinearizationCallback"  # the name in lines and warnings
    log_prefix = "linearization"

    def __init__(
        self,
        scorer,
        *,
        data=None,
        validation_data=None,
        warmup_epochs=1,
        interval=2,
        ramp_epochs=1,
        monitor="auto",
        mode="auto",
        tolerance=None,
        patience=3,
        max_layers=None,
        candidates=None,
        recalibrate="auto",
        samples=1024,
        batch_size=128,
        seed=0,
        verbose=1,
        objective="activations",
        exact=True,
        cost_model=None,
        per_decision=1,
        precheck="auto",
        interval_steps=None,
    ):
        super().__init__()
        self.scorer = as_scorer(scorer)
        self.objective = check_objective(objective)
        self.exact = check_bool("exact", exact)
        self.cost_model = check_cost_model(cost_model)
        self.schedule = Schedule(warmup_epochs, interval, ramp_epochs, interval_steps)
        self.guard = Guard(monitor, mode, tolerance)
        if interval_steps is not None and (
            validation_data is None or monitor != "auto"
        ):
            raise ValueError(
                "`interval_steps` judges changes between batches, where `logs` "
                "hold no validation metric: pass `validation_data=(x, y)` and "
                "leave `monitor='auto'` (the guard then measures its own sample). "
                "Received: validation_data="
                f"{'None' if validation_data is None else '...'}, monitor={monitor!r}"
            )
        Pace(per_decision)  # checked here, made afresh at each fit
        self.per_decision = per_decision
        self.patience = check_int("patience", patience, 1)
        self.samples = check_int("samples", samples, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.max_layers = (
            None if max_layers is None else check_int("max_layers", max_layers, 1)
        )
        self.candidates = check_candidates(candidates)
        if not isinstance(precheck, (bool, str)):
            check_number(
                "precheck",
                precheck,
                0,
                low_open=True,
                what="the drop allowed (or 'auto', True, False)",
            )
        elif precheck != "auto" and not isinstance(precheck, bool):
            check_choice("precheck", precheck, ["auto", True, False])
        self.precheck = precheck
        self.recalibrate = check_choice(
            "recalibrate", recalibrate, ["auto", True, False]
        )
        self.data = check_data("data", data)
        self.validation_data = check_data("validation_data", validation_data)
        if "data" in self.scorer.needs and data is None:
            raise ValueError(
                f"The {self.scorer.label} ranking measures statistics on data: "
                "pass `data=x_sample`. Received: data=None"
            )
        if "labels" in self.scorer.needs and validation_data is None:
            raise ValueError(
                f"The {self.scorer.label} ranking measures each candidate on "
                "labelled data: pass `validation_data=(x, y)`. Received: "
                "validation_data=None"
            )
        self.seed = seed
        self.verbose = verbose

    # The schedule's and the guard's arguments, as attributes of their own.
    warmup_epochs = property(lambda self: self.schedule.warmup_epochs)
    interval = property(lambda self: self.schedule.interval)
    interval_steps = property(lambda self: self.schedule.interval_steps)
    ramp_epochs = property(lambda self: self.schedule.ramp_epochs)
    monitor = property(lambda self: self.guard.monitor)
    mode = property(lambda self: self.guard.mode)
    tolerance = property(lambda self: self.guard.tolerance)
    monitored = property(lambda self: self.guard.monitored)

    # ------------------------------------------------------------- lifecycle
    def on_train_begin(self, logs=None):
        self.linearized, self.kept, self.events = [], [], []
        self.rollbacks = 0
        self.pace = Pace(self.per_decision)  # a fraction halves at each rollback
        self.guard.monitored = self.guard.maximize = None
        self._pending = None
        self._ramp = None
        self._best = None
        self._stopped = False
        self._warned_wait = False
        self._rejections = 0
        self._last_epoch = None
        self._epoch = 0
        self._since_warmup = None  # steps since the warm-up ended (in steps)
        self._at_step = None  # the batch (1-based) of a decision between batches
        self._last_value = None
        self._measured = math.nan
        self._rng = np.random.default_rng(self.seed)
        self._prepare()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._ramp is not None and not self._ramp.done:
            self._ramp.step()
        if self._since_warmup is None or not self._active:
            return
        self._since_warmup += 1
        if self.schedule.is_decision_step(self._since_warmup):
            self._at_step = batch + 1
            try:
                self._decision_point(
                    self._epoch, {}, self._steps_left(self._epoch, batch)
                )
            finally:
                self._at_step = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self._active:
            self._step(epoch, logs)
        prefix = self.log_prefix
        logs[f"{prefix}_linearized"] = float(len(self.linearized))
        logs[f"{prefix}_rollbacks"] = float(self.rollbacks)
        if self._measures_itself():
            logs[f"{prefix}_val_{self.monitored or 'loss'}"] = float(self._measured)

    def on_train_end(self, logs=None):
        if not self._active:
            return
        if self._ramp is not None:
            self._ramp.finish()
        if self._pending is not None:
            if not self._measures_itself() and (
                self._last_epoch == self._pending.epoch
            ):
                self._rollback(self._last_epoch, None, "no epoch trained to judge it")
            else:
                self._recalibrate()
                value = self._value(self._last_epoch, {}, final=True)
                self._judge(self._last_epoch, value)
        self._recalibrate()

    # ------------------------------------------------------------- the hook
    def make_change(self, decision):
        """Changes the model at one decision; the one hook a method
        overrides.

        Called after the last change was judged, with the weights' snapshot
        already taken (a rollback restores it). The default linearizes the
        scorer's safest candidates (with what `also_take` adds), at the
        pace's count, eased in over `ramp_epochs`; with "depth" / "latency",
        whole merge units.

        Args:
            decision: a `Decision` (epoch, pool, units, room, context).

        Returns:
            a `Change` (the activations it linearized, the records to undo
            on a rollback, the event to record), or
            `decision.stop(reason)` when there is nothing to do.
        """
        ranked = self.scorer(decision.context, decision.pool)
        if not ranked:
            note = getattr(self.scorer, "note", None)
            if note:
                return decision.wait(note)
            return decision.stop("no candidate with statistics left")
        if decision.units is None:
            first = ranked[: self.pace.count(len(ranked))]
            chosen = first + [
                s for s in self.scorer.also_take(ranked) if s not in first
            ]
            chosen = chosen[: decision.room if decision.room != math.inf else None]
            groups = len(chosen)
        else:
            extra = {s.pair.activation.name for s in self.scorer.also_take(ranked)}
            chosen, groups = pick_units(
                ranked,
                decision.units,
                decision.found,
                self.objective,
                self.pace.count(len(decision.units)),
                decision.room,
                extra,
            )
            if not chosen:
                return decision.stop("no merge unit fully scored fits")
        ramp_steps = self.schedule.ramp_steps((self.params or {}).get("steps"))
        self._ramp = Ramp(self.model, chosen, ramp_steps)
        off = [None if s.off is None else int(np.sum(s.off)) for s in chosen]
        details = {
            "ranking": self.scorer.name,
            "label": self.scorer.label,
            "values": [s.value for s in chosen],
            "channels_off": off,
            "ramp_epochs": self.ramp_epochs if ramp_steps else 0,
            "ramp_steps": ramp_steps,
            "ranked": [(s.pair.activation.name, s.value) for s in ranked],
            "objective": self.objective,
            "pace": self.pace.value,
            "units": None
            if decision.units is None
            else [(u.activations, u.gain(self.objective)) for u in decision.units],
        }
        # A fractional pace retries a rolled-back group at half the pace; a
        # single candidate that fails stays nonlinear for good.
        return Change(
            layers=[s.pair.activation.name for s in chosen],
            ramp=self._ramp,
            retry=self.pace.fractional and groups > 1,
            details=details,
            preview=None if self._ramp.done else self._ramp.preview,
        )
