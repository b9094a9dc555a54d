"""TLCCallback: linearize activations one by one while the model trains."""

import math
import warnings

import keras
import numpy as np

from keras_collapse.callbacks import ranking
from keras_collapse.callbacks.ranking import RANKINGS
from keras_collapse.callbacks.validation_sample import take_sample
from keras_collapse.checks import check_int
from keras_collapse.collapsible import sync_training_state
from keras_collapse.linearize import linearize_pairs
from keras_collapse.linearize import rebuild_train_function
from keras_collapse.scores.batchnorm import analyze_pairs
from keras_collapse.scores.pairs import find_pairs


class TLCCallback(keras.callbacks.Callback):
    """Till the Layers Collapse: linearizes activations during `fit`, one at
    a time, and undoes any that costs accuracy.

    Every `interval` epochs after `warmup_epochs`, the callback judges the
    last linearization and picks the next activation:

    - **Without data** (the default), candidates are ranked by their
      BatchNormalization statistics (`analyze_batchnorm`): the layer whose
      channels are most surely always ON or always OFF goes first. The guard
      is the monitored metric in `logs` (`monitor`).
    - **With `validation_data`**, each candidate is linearized in turn on a
      fixed sample of it (`validation_samples` rows, the same rows every
      time) and the one whose loss rises least goes first; the guard is the
      accuracy (else the loss) measured on that sample.

    A layer is linearized the TLC way (`linearize`): OFF channels zeroed at
    its BatchNormalization, the activation locked to the identity; activations
    without a BN right before them (after a residual `Add`) can only be locked
    and are candidates only with `validation_data` or `ranking="random"`.
    If, at the next decision, the monitored value has fallen more than
    `tolerance` below the best seen, every weight goes back to the moment
    before that linearization (the epochs since are lost) and the layer is
    kept nonlinear. After `patience` such rollbacks in a row, or
    `max_layers` linearizations, or when no candidate is left, the callback
    stops changing the model. No linearization is made so late that it could
    not be judged before training ends. Follow with `keras_collapse.surgery`
    to merge the linearized layers away.

    What it did goes into `logs` each epoch (`tlc_linearized`,
    `tlc_rollbacks` and, with `validation_data`, `tlc_val_<metric>`), so
    `History`, `CSVLogger` and `TensorBoard` record it (list this callback
    before `CSVLogger` and `TensorBoard`: callbacks see `logs` in turn), and into
    `self.linearized`, `self.kept`, `self.rollbacks`, `self.monitored` (the
    metric the guard read) and `self.events` (a list of dicts).
    One instance serves several `fit` calls: its state resets at
    `on_train_begin`, and layers linearized before are left as they are.
    The model's weights are the truth: `EarlyStopping(restore_best_weights=True)`
    may restore weights from before a linearization (the lock is a weight),
    undoing it; `layer.is_locked` then says so.

    Args:
        validation_data: tuple `(x, y)` / `(x, y, sample_weight)` of arrays,
            or an iterable of such batches; a fixed sample of it ranks the
            candidates and guards the result. Defaults to `None` (data-free).
        ranking: "auto", "batchnorm", "validation" or "random". "auto" is
            "validation" with `validation_data`, else "batchnorm"; "random"
            (seeded by `seed`) is a baseline. Defaults to `"auto"`.
        warmup_epochs: int >= 1, epochs before the first decision.
            Defaults to `1`.
        interval: int >= 1, epochs between decisions (training that each
            linearization gets before it is judged). Defaults to `2`.
        monitor: the guarded metric. "auto" picks, without
            `validation_data`, the first of `val_<accuracy>`, `<accuracy>`,
            `val_loss`, `loss` found in `logs`; with it, the accuracy
            measured on the sample (else its loss). Any other name is read
            from `logs`. Defaults to `"auto"`.
        tolerance: float >= 0, how far the monitored value may fall behind
            the best seen: absolute for accuracies (0.01 is one point),
            relative for losses (0.05 is 5 %). Defaults to `None`: 0.01 for
            accuracies, 0.05 for losses.
        patience: int >= 1, rollbacks in a row after which the callback stops.
            Defaults to `3`.
        max_layers: int or None, the most activations to linearize.
            Defaults to `None` (no limit).
        candidates: list of activation names that may be linearized, or None
            for all. Defaults to `None`.
        multi_removal: bool, with `validation_data`: also linearize, at the
            same decision, every other candidate whose measured loss does not
            rise (TLC's multi-removal); they are judged, and rolled back,
            together. Defaults to `False`.
        validation_samples: int, the size of the fixed sample.
            Defaults to `1024`.
        batch_size: int, the batch size of the measurements. Defaults to `128`.
        seed: int, for the sample and the random ranking. Defaults to `0`.
        verbose: 0 or 1, whether to print a line per decision.
            Defaults to `1`.

    Raises:
        ValueError: (at `on_train_begin`) if the model has no collapsible
            activation (call `keras_collapse.make_collapsible` first), or
            `candidates` names something else.

    Example:

    >>> model = keras_collapse.make_collapsible(model)
    >>> tlc = keras_collapse.TLCCallback()
    >>> model.fit(x, y, epochs=20, callbacks=[tlc])
    >>> tlc.linearized            # ['re_lu_7', 're_lu_3', ...]
    >>> small = keras_collapse.surgery(model)

    Reference:
        Till the Layers Collapse, arXiv 2412.15077.
    """

    def __init__(
        self,
        validation_data=None,
        *,
        ranking="auto",
        warmup_epochs=1,
        interval=2,
        monitor="auto",
        tolerance=None,
        patience=3,
        max_layers=None,
        candidates=None,
        multi_removal=False,
        validation_samples=1024,
        batch_size=128,
        seed=0,
        verbose=1,
    ):
        super().__init__()
        if ranking not in ("auto", *RANKINGS):
            raise ValueError(
                f"`ranking` must be one of {('auto', *RANKINGS)}. Received: "
                f"ranking={ranking!r}"
            )
        if ranking == "validation" and validation_data is None:
            raise ValueError(
                "ranking='validation' measures each candidate on data: pass "
                "`validation_data=(x, y)`. Received: validation_data=None"
            )
        if multi_removal and validation_data is None:
            raise ValueError(
                "`multi_removal=True` linearizes the candidates whose measured "
                "loss does not rise: pass `validation_data=(x, y)` too."
            )
        check_int("warmup_epochs", warmup_epochs, 1)
        check_int("interval", interval, 1)
        check_int("patience", patience, 1)
        check_int("validation_samples", validation_samples, 1)
        check_int("batch_size", batch_size, 1)
        if max_layers is not None:
            check_int("max_layers", max_layers, 1)
        if tolerance is not None and (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, (int, float))
            or not tolerance >= 0
        ):
            raise ValueError(
                f"`tolerance` must be a number >= 0 or None. Received: "
                f"tolerance={tolerance!r}"
            )
        if not isinstance(monitor, str):
            raise ValueError(
                "`monitor` must be 'auto' or a metric name. Received: "
                f"monitor={monitor!r}"
            )
        if candidates is not None and (
            isinstance(candidates, str)
            or not all(isinstance(c, str) for c in candidates)
        ):
            raise ValueError(
                "`candidates` must be a list of activation layer names or None. "
                f"Received: candidates={candidates!r}"
            )
        self.validation_data = validation_data
        self.ranking = ranking
        self.warmup_epochs = warmup_epochs
        self.interval = interval
        self.monitor = monitor
        self.tolerance = tolerance
        self.patience = patience
        self.max_layers = max_layers
        self.candidates = None if candidates is None else list(candidates)
        self.multi_removal = multi_removal
        self.validation_samples = validation_samples
        self.batch_size = batch_size
        self.seed = seed
        self.verbose = verbose
        self._warned_no_bn = False

    # ------------------------------------------------------------- lifecycle
    def on_train_begin(self, logs=None):
        self.linearized, self.kept, self.events = [], [], []
        self.rollbacks = 0
        self._pending = None
        self._best = None
        self._stopped = False
        self._rejections = 0
        self._last_epoch = None
        self._last_value = None
        self._measured = math.nan
        self.monitored = None
        self._rng = np.random.default_rng(self.seed)
        self._pairs = find_pairs(self.model)
        if not self._pairs:
            raise ValueError(
                f"TLCCallback found no collapsible activation in model "
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
        self._ranking = self.ranking
        if self._ranking == "auto":
            self._ranking = (
                "batchnorm" if self.validation_data is None else "validation"
            )
        self._active = True
        if self._ranking == "batchnorm" and all(
            p.batchnorm is None for p in self._pairs
        ):
            self._active = False
            if not self._warned_no_bn:
                self._warned_no_bn = True
                warnings.warn(
                    "TLCCallback: no collapsible activation of model "
                    f"'{self.model.name}' reads a BatchNormalization, so there "
                    "are no statistics to rank them by; this callback does "
                    "nothing. Options: pass `validation_data=(x, y)` to rank "
                    "them by measured loss, or train with "
                    "`LinearityRegularizer` and call `lock_near_linear` "
                    "(LayerCollapse). Data-driven statistics (EASIER) are "
                    "planned.",
                    stacklevel=2,
                )
        self._sample = None
        if self.validation_data is not None:
            self._sample = take_sample(
                self.validation_data, self.validation_samples, self.seed
            )
            if self.monitor == "auto":  # the baseline, and the metric's name
                self._value(None, {}, final=True)
                self._best = self._measured

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self._active:
            self._step(epoch, logs)
        logs["tlc_linearized"] = float(len(self.linearized))
        logs["tlc_rollbacks"] = float(self.rollbacks)
        if self._sample is not None:
            logs[f"tlc_val_{self.monitored or 'loss'}"] = float(self._measured)

    def on_train_end(self, logs=None):
        if self._active and self._pending is not None:
            value = self._value(self._last_epoch, {}, final=True)
            if not self._measures_itself() and (
                self._last_epoch == self._pending["epoch"]
            ):
                self._rollback(self._last_epoch, value, "no epoch trained to judge it")
            else:
                self._judge(self._last_epoch, value)

    # ------------------------------------------------------------- decisions
    def _step(self, epoch, logs):
        self._last_epoch = epoch
        is_decision = (epoch + 1 - self.warmup_epochs) % self.interval == 0 and (
            epoch + 1 >= self.warmup_epochs
        )
        value = self._value(epoch, logs, final=is_decision)
        if value is None:
            return
        if self._pending is None:
            self._best = (
                value if self._best is None else self._better(value, self._best)
            )
        if not is_decision:
            return
        if self._pending is not None:
            self._judge(epoch, value)
        if not self._stopped and self._room_after(epoch):
            self._linearize_next(epoch)

    def _judge(self, epoch, value):
        pending, self._pending = self._pending, None
        best = pending["best"]
        if value is not None and self._within_tolerance(value, best):
            self._rejections = 0
            self._best = self._better(value, best)
            self._event(epoch, "accepted", pending["layers"], value=value, best=best)
        else:
            self._rollback(epoch, value, "the monitored value fell too far", pending)

    def _rollback(self, epoch, value, reason, pending=None):
        pending = pending or self._pending
        self._pending = None
        sync_training_state(self.model)
        for record in reversed(pending["records"]):
            record.undo()
        self.model.set_weights(pending["snapshot"])
        rebuild_train_function(self.model)
        self.rollbacks += 1
        self._rejections += 1
        for name in pending["layers"]:
            self.linearized.remove(name)
            self.kept.append(name)
        self._event(
            epoch,
            "rolled back",
            pending["layers"],
            value=value,
            best=pending["best"],
            reason=reason,
        )
        if self._rejections >= self.patience:
            self._stop(epoch, f"{self._rejections} rollbacks in a row (patience)")

    def _linearize_next(self, epoch):
        if self.max_layers is not None and len(self.linearized) >= self.max_layers:
            return self._stop(epoch, f"max_layers={self.max_layers} reached")
        pool = self._candidate_pairs()
        if not pool:
            return self._stop(epoch, "no candidate left")
        ranked = self._rank(pool)
        if not ranked:
            return self._stop(epoch, "no candidate with statistics left")
        chosen = [ranked[0]]
        if self.multi_removal:
            chosen += [item for item in ranked[1:] if item[1] <= 0.0]
        if self.max_layers is not None:
            chosen = chosen[: self.max_layers - len(self.linearized)]
        sync_training_state(self.model)
        snapshot = self.model.get_weights()
        records = linearize_pairs(self.model, [pair for pair, _ in chosen])
        if any(r.off for r in records):
            rebuild_train_function(self.model)
        layers = [pair.activation.name for pair, _ in chosen]
        self.linearized.extend(layers)
        self._pending = {
            "epoch": epoch,
            "layers": layers,
            "records": records,
            "snapshot": snapshot,
            "best": self._best,
        }
        self._event(
            epoch,
            "linearized",
            layers,
            ranking=self._ranking,
            values=[value for _, value in chosen],
            channels_on=[r.on for r in records],
            channels_off=[r.off for r in records],
            ranked=[(pair.activation.name, value) for pair, value in ranked],
        )

    def _stop(self, epoch, reason):
        self._stopped = True
        self._event(epoch, "stopped", [], reason=reason)

    def _rank(self, pool):
        if self._ranking == "batchnorm":
            analysis = analyze_pairs(pool)
            for states in analysis:
                if states.reason and states.reason.startswith("non-finite"):
                    self.kept.append(states.name)
                    self._event(
                        self._last_epoch, "skipped", [states.name], reason=states.reason
                    )
            return ranking.rank_by_batchnorm(pool, analysis)
        if self._ranking == "random":
            return ranking.rank_randomly(pool, self._rng)
        base = self._evaluate()["loss"]
        return ranking.rank_by_validation(self.model, pool, self._evaluate, base)

    def _candidate_pairs(self):
        done = set(self.linearized) | set(self.kept)
        allowed = set(self.candidates) if self.candidates is not None else None
        return [
            p
            for p in self._pairs
            if p.activation.name not in done
            and (allowed is None or p.activation.name in allowed)
            and not p.activation.is_linear
            and (self._ranking != "batchnorm" or p.batchnorm is not None)
        ]

    # ------------------------------------------------------------ monitoring
    def _value(self, epoch, logs, final):
        """The monitored value now (None when it cannot be read)."""
        if self._measures_itself():
            if not final:
                return None
            result = self._evaluate()
            self.monitored = self.monitored or _accuracy_key(result) or "loss"
            self._measured = float(result[self.monitored])
            self._last_value = self._measured
            return self._measured
        if not logs:
            return self._last_value
        if self.monitored is None:
            self.monitored = self._resolve_monitor(logs)
            if self.monitored is None:
                return None
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
                    f"TLCCallback monitors '{self.monitor}', which is not in the "
                    f"logs (available: {sorted(logs)}); it makes no change to the "
                    "model without it.",
                    stacklevel=3,
                )
                return None
            return self.monitor
        accuracy = _accuracy_key(logs, prefix="val_") or _accuracy_key(logs)
        for key in (accuracy, "val_loss", "loss"):
            if key is not None and key in logs:
                return key
        self._active = False
        warnings.warn(
            f"TLCCallback found neither an accuracy nor a loss in the logs "
            f"(available: {sorted(logs)}); it makes no change to the model.",
            stacklevel=3,
        )
        return None

    def _evaluate(self):
        x, y, w = self._sample
        return self.model.evaluate(
            x,
            y,
            sample_weight=w,
            batch_size=self.batch_size,
            verbose=0,
            return_dict=True,
        )

    def _measures_itself(self):
        """Whether the guard is the callback's own measurement on the sample
        (else a metric read from `logs`)."""
        return self._sample is not None and self.monitor == "auto"

    def _maximize(self):
        return "acc" in (self.monitored or "")

    def _better(self, a, b):
        return max(a, b) if self._maximize() else min(a, b)

    def _within_tolerance(self, value, best):
        if best is None or not math.isfinite(value):
            return math.isfinite(value)
        if self._maximize():
            tolerance = 0.01 if self.tolerance is None else self.tolerance
            return value >= best - tolerance
        tolerance = 0.05 if self.tolerance is None else self.tolerance
        return value <= best + tolerance * abs(best)

    def _room_after(self, epoch):
        """Whether training lasts long enough to judge a change made now."""
        epochs = (self.params or {}).get("epochs")
        return epochs is None or epoch + self.interval <= epochs - 1

    # --------------------------------------------------------------- records
    def _event(self, epoch, action, layers, **details):
        event = {
            "epoch": None if epoch is None else epoch + 1,
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
            print("\n" + _describe(event, key))

    def analysis(self):
        """The model's current `BatchNormAnalysis`."""
        return analyze_pairs(find_pairs(self.model))


def _accuracy_key(logs, prefix=""):
    """The first accuracy-like key: `val_...acc...` with prefix "val_",
    a training one without."""
    for key in logs:
        if key.startswith("tlc_") or not key.startswith(prefix):
            continue
        if (prefix or not key.startswith("val_")) and "acc" in key[len(prefix) :]:
            return key
    return None


def _describe(event, key):
    epoch = "" if event["epoch"] is None else f"Epoch {event['epoch']}: "
    layers = ", ".join(event["layers"])
    action = event["action"]
    if action == "linearized":
        values = ", ".join(f"{v:.4g}" for v in event["values"])
        what = {
            "batchnorm": "BN score",
            "validation": "loss increase",
            "random": "random rank",
        }[event["ranking"]]
        off = sum(event["channels_off"])
        return (
            f"{epoch}TLCCallback linearized {layers} ({what} {values}; "
            f"{off} OFF channels zeroed)."
        )
    if action in ("accepted", "rolled back"):
        value = event.get("value")
        shown = "n/a" if value is None else f"{value:.4f}"
        best = event.get("best")
        best = "n/a" if best is None else f"{best:.4f}"
        tail = f" ({event['reason']})" if event.get("reason") else ""
        return (
            f"{epoch}TLCCallback {action} {layers}: {key} {shown}, best before "
            f"{best}{tail}."
        )
    what = f" {layers}" if layers else ""
    return f"{epoch}TLCCallback {action}{what}: {event.get('reason', '')}."
