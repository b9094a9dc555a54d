"""The decision engine the greedy linearization callbacks share.

`LinearizationCallback` runs the loop: at each decision (`schedule`), judge
the last `Change` (`guard`; roll it back if it cost too much), then ask the
method for the next one through its one hook, `make_change`. What a
decision may take (the pace, the merge units) is `selection`'s, what a
scorer may use `context`'s; what to linearize next is a scorer's
(`keras_collapse.scores.scorers`), what "linearize" does to the weights the
action's (`linearize`, `ramp`). TLCCallback and EASIERCallback only choose a
scorer; NEPENTHECallback overrides `make_change` (prune, and linearize what
reached zero entropy).
"""

import math
import warnings

import keras
import numpy as np

from keras_collapse import data as data_lib
from keras_collapse.callbacks.change import Change
from keras_collapse.callbacks.context import DecisionContext
from keras_collapse.callbacks.context import evaluate_sample
from keras_collapse.callbacks.guard import Guard
from keras_collapse.callbacks.guard import accuracy_key
from keras_collapse.callbacks.precheck import Precheck
from keras_collapse.callbacks.schedule import Schedule
from keras_collapse.callbacks.selection import Pace
from keras_collapse.callbacks.selection import check_pace  # noqa: F401
from keras_collapse.callbacks.selection import pick_units
from keras_collapse.callbacks.selection import units_of
from keras_collapse.checks import check_int
from keras_collapse.collapsible import sync_training_state
from keras_collapse.graph import Graph
from keras_collapse.linearize import rebuild_train_function
from keras_collapse.ramp import Ramp
from keras_collapse.recalibrate import BatchNormRecalibrator
from keras_collapse.scores.pairs import find_pairs
from keras_collapse.scores.scorers import as_scorer
from keras_collapse.units import check_objective


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


class LinearizationCallback(keras.callbacks.Callback):
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
        tolerance: float >= 0, how far the monitored value may fall: absolute
            when maximized (0.01 is one point of accuracy), relative when
            minimized (0.05 is 5 %). Defaults to `None`: 0.02 and 0.05.
        patience: int >= 1, rollbacks in a row after which it stops.
            Defaults to `3`.
        max_layers: int or None, the most activations to linearize.
            Defaults to `None`.
        candidates: list of activation names that may be linearized, or
            None for all. Defaults to `None`.
        recalibrate: bool or "auto", whether to re-estimate the BN statistics
            (on the `data` sample; with True and only `validation_data`, on
            its inputs) before each judgment and at the end. "auto": when
            `data` is given. Defaults to `"auto"`.
        samples: int, the size of the fixed samples. Defaults to `1024`.
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
            decision. The tolerance is `precheck.SLACK` (5) times the
            guard's (0.1 accuracy, 10 % of the predictions, 25 % more loss
            by default): a change costs more before its recovery than the
            guard accepts after it. A float sets it (absolute when
            maximized, relative when minimized). "auto": on when there is a
            sample. Defaults to `"auto"`.
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
        if not isinstance(exact, bool):
            raise ValueError(f"`exact` must be True or False. Received: {exact!r}")
        if cost_model is not None and not callable(cost_model):
            raise ValueError(
                "`cost_model` must be callable as cost_model(kind, kernel_shape, "
                f"output_positions), or None. Received: {cost_model!r}"
            )
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
        self.exact = exact
        self.cost_model = cost_model
        self.per_decision = per_decision
        check_int("patience", patience, 1)
        check_int("samples", samples, 1)
        check_int("batch_size", batch_size, 1)
        if max_layers is not None:
            check_int("max_layers", max_layers, 1)
        if candidates is not None and (
            isinstance(candidates, str)
            or not all(isinstance(c, str) for c in candidates)
        ):
            raise ValueError(
                "`candidates` must be a list of activation layer names or None. "
                f"Received: candidates={candidates!r}"
            )
        if not (precheck is True or precheck is False or precheck == "auto") and not (
            isinstance(precheck, (int, float))
            and not isinstance(precheck, bool)
            and precheck > 0
        ):
            raise ValueError(
                "`precheck` must be 'auto', True, False or a tolerance > 0. "
                f"Received: precheck={precheck!r}"
            )
        self.precheck = precheck
        if recalibrate not in ("auto", True, False):
            raise ValueError(
                "`recalibrate` must be 'auto', True or False. Received: "
                f"recalibrate={recalibrate!r}"
            )
        for name, value in (("data", data), ("validation_data", validation_data)):
            if value is not None and isinstance(value, (int, float, str, bytes)):
                raise ValueError(
                    f"`{name}` must be arrays or an iterable of batches. "
                    f"Received: {type(value).__name__}"
                )
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
        self.data = data
        self.validation_data = validation_data
        self.patience = patience
        self.max_layers = max_layers
        self.candidates = None if candidates is None else list(candidates)
        self.recalibrate = recalibrate
        self.samples = samples
        self.batch_size = batch_size
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
        self._pairs = find_pairs(self.model)
        if not self._pairs:
            raise ValueError(
                f"{self.method} found no collapsible activation in model "
                f"'{self.model.name}'. Convert its activations first: "
                "`model = keras_collapse.make_collapsible(model)` (then compile "
                "and fit that model)."
            )
        names = [p.activation.name for p in self._pairs]
        unknown = sorted(set(self.candidates or ()) - set(names))
        if unknown:
            raise ValueError(
                f"`candidates` names layers that are not collapsible activations "
                f"of model '{self.model.name}': {unknown}. Available: {names}"
            )
        self._graph = Graph.from_model(self.model)
        n_inputs = len(self.model.inputs)
        # Samples are drawn and checked here, before any change to the model.
        self._sample = self._data = None
        if self.validation_data is not None:
            self._sample = data_lib.take_sample(
                self.validation_data,
                self.samples,
                self.seed,
                n_inputs=n_inputs,
                labels=True,
                what="validation_data",
            )
            data_lib.check_inputs(self.model, self._sample[0], "validation_data")
        if self.data is not None:
            self._data = data_lib.take_sample(
                self.data, self.samples, self.seed, n_inputs=n_inputs, what="data"
            )[0]
            data_lib.check_inputs(self.model, self._data, "data")
        # BN statistics come from the training inputs (`data`): re-estimating
        # them on the validation sample would make the guard judge on the
        # data the statistics were fitted to. With `recalibrate=True` and
        # only validation data, its inputs are used.
        calibration = self._data
        if calibration is None and self.recalibrate is True and self._sample:
            calibration = self._sample[0]
        self._recalibrator = None
        if calibration is not None and self.recalibrate in ("auto", True):
            recalibrator = BatchNormRecalibrator(self.model)
            if recalibrator.layers:
                self._recalibrator = (recalibrator, calibration)
        self._precheck = None
        has_sample = self._sample is not None or self._data is not None
        if self.precheck is not False and (self.precheck != "auto" or has_sample):
            own = self.precheck if not isinstance(self.precheck, (bool, str)) else None
            self._precheck = Precheck(
                self.model,
                self._sample,
                self._data,
                self.tolerance,
                self.batch_size,
                own_tolerance=own,
            )
            if not self._precheck.active:
                raise ValueError(
                    f"{self.method}: `precheck=True` measures each change on a "
                    "sample: pass `validation_data=(x, y)` or `data=x`."
                )
        self._active = self._check_scorable()
        if self._active and self.objective != "activations":
            self._active = self._check_units()
        if self._active and self._measures_itself():
            self._best = self._value(None, {}, final=True)  # the baseline

    def _check_scorable(self):
        """Whether any candidate can be scored; warns once otherwise."""
        if not self.scorer.batchnorm_only or any(
            p.batchnorm is not None for p in self._pairs
        ):
            return True
        if not getattr(self, "_warned_unscorable", False):
            self._warned_unscorable = True
            warnings.warn(self._unscorable_message(), stacklevel=3)
        return False

    def _check_units(self):
        """Whether some merge unit buys something under the objective;
        warns once (why, and what would help) otherwise."""
        pool = self._candidate_pairs()
        if not pool:
            return True  # nothing to choose from: said elsewhere
        found = units_of(self.model, pool, exact=self.exact, cost_model=self.cost_model)
        if found.for_objective(self.objective):
            return True
        if not getattr(self, "_warned_no_unit", False):
            self._warned_no_unit = True
            warnings.warn(
                f"{self.method}: in model '{self.model.name}', "
                f"{self._why_no_unit(pool, found)} This callback does nothing.",
                stacklevel=3,
            )
        return False

    def _why_no_unit(self, pool, found):
        """Why no candidate unit buys anything; names `data=` when units
        exist among activations this ranking cannot score (no BatchNorm)."""
        if not self.scorer.batchnorm_only:
            return found.why_none(self.objective)
        names = {p.activation.name for p in pool}
        others = [
            p for p in self._pairs if p.batchnorm is None and not p.activation.is_linear
        ]
        if others:
            wider = units_of(
                self.model,
                [*[p for p in self._pairs if p.activation.name in names], *others],
                exact=self.exact,
                cost_model=self.cost_model,
            ).for_objective(self.objective)
            unscored = sorted(
                {n for u in wider for n in u.activations if n not in names}
            )
            if unscored:
                return (
                    f"the merge units under objective {self.objective!r} hold "
                    f"activations without a BatchNormalization ({unscored}), "
                    f"which the {self.scorer.label} cannot score: pass "
                    "`data=x_sample` (or `validation_data=(x, y)`) to make "
                    "them candidates."
                )
        return found.why_none(self.objective)

    def _unscorable_message(self):
        return (
            f"{self.method}: no collapsible activation of model "
            f"'{self.model.name}' can be scored by the {self.scorer.label}; "
            "this callback does nothing."
        )

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

    # ------------------------------------------------------------- decisions
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
        self.kept.extend(change.layers)
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

    def _recalibrate(self):
        if self._recalibrator is None:
            return
        recalibrator, x = self._recalibrator
        sync_training_state(self.model)
        recalibrator.run(x, batch_size=self.batch_size)

    # ------------------------------------------------------------ monitoring
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
        return evaluate_sample(self.model, self._sample, self.batch_size)

    def _measures_itself(self):
        """Whether the guard is the callback's own measurement on the
        labelled sample (else a metric read from `logs`)."""
        return getattr(self, "_sample", None) is not None and self.monitor == "auto"

    # --------------------------------------------------------------- records
    def _event(self, epoch, action, layers, message=None, **details):
        event = {
            "epoch": None if epoch is None else epoch + 1,
            **({} if self._at_step is None else {"step": self._at_step}),
            "action": action,
            "layers": list(layers),
            **details,
        }
        self.events.append(event)
        if self.verbose:
            key = (
                f"sample {self.monitored}"
                if self._measures_itself()
                else self.monitored
            )
            # A line of its own, after Keras' progress bar (as Keras' callbacks do).
            line = message or _describe(self.method, event, key)
            print("\n" + line)


def _describe(method, event, key):
    """The engine's own events as a verbose line."""
    epoch = "" if event["epoch"] is None else f"Epoch {event['epoch']}"
    epoch += f", step {event['step']}: " if "step" in event else (": " if epoch else "")
    layers = ", ".join(event["layers"])
    action = event["action"]
    if action == "linearized":
        values = ", ".join(f"{v:.4g}" for v in event["values"])
        off = sum(n for n in event["channels_off"] if n)
        how = "at once"
        if event.get("ramp_steps") and "step" in event:
            how = f"eased in over the next {event['ramp_steps']} steps"
        elif event["ramp_epochs"]:
            how = f"eased in over the next {event['ramp_epochs']} epoch(s)"
        return (
            f"{epoch}{method} linearized {layers} ({event['label']} {values}; "
            f"{off} OFF channels zeroed; {how})."
        )
    if action in ("accepted", "rolled back"):
        value = event.get("value")
        shown = "n/a" if value is None else f"{value:.4f}"
        best = event.get("best")
        best = "n/a" if best is None else f"{best:.4f}"
        tail = f" ({event['reason']})" if event.get("reason") else ""
        if event.get("retried"):
            tail += "; back among the candidates at half the pace"
        what = f" {layers}" if layers else ""
        return (
            f"{epoch}{method} {action}{what}: {key} {shown}, best before {best}{tail}."
        )
    what = f" {layers}" if layers else ""
    reason = event.get("reason")
    return f"{epoch}{method} {action}{what}" + (f": {reason}." if reason else ".")
