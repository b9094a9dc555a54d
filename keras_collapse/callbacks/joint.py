"""JointLinearizationCallback: every linearization learned at once, to a
budget, then hardened and recovered (DepthShrinker, SNL and CoFi's shape).

The greedy callbacks change one candidate per decision and judge it an
epoch later, so a short fine-tune holds a few changes. Here every candidate
activation's slope is a gate in [0, 1] that the optimizer trains with the
rest of the model, at a learning-rate scale of its own; a budget controller
(a Lagrange multiplier, not a hand-tuned weight) pulls the gates toward the
target; then the chosen set is pushed to 1 and the rest to 0; then it is set
exactly (the chosen locked to the identity, the rest pinned at their
activation), BatchNorm is re-estimated and the network recovers with the
set fixed. Three phases, as shares of the fit's training steps:

    search (`search`)  |  polarize (`polarize`)  |  recovery (the rest)
"""

import math

import keras
import numpy as np

from keras_collapse import data as data_lib
from keras_collapse.callbacks.budget import Budget
from keras_collapse.callbacks.budget import Multiplier
from keras_collapse.callbacks.budget import check_target
from keras_collapse.callbacks.context import DecisionContext
from keras_collapse.callbacks.context import student_of
from keras_collapse.collapsible import sync_training_state
from keras_collapse.linearize import rebuild_train_function
from keras_collapse.recalibrate import BatchNormRecalibrator
from keras_collapse.scores.pairs import find_pairs
from keras_collapse.scores.scorers import BatchNormScorer
from keras_collapse.scores.scorers import EntropyScorer
from keras_collapse.scores.scorers import GaussianScorer
from keras_collapse.scores.scorers import as_scorer
from keras_collapse.units import check_objective

SEARCH, POLARIZE, RECOVERY = "search", "polarize", "recovery"
# The hard set's marks on a gate's range: a saved model carries them, so a
# fit resumed after the hard set finds the set in the model.
CHOSEN, PINNED = (1.0, 1.0), (0.0, 0.0)
# An "auto" gate scale lets a gate at full speed cross [0, 1] this many times
# during the search: fast enough to settle, slow enough to follow the loss.
CROSSINGS = 2.0
PRIORS = ("tlc", "easier")


def _check_share(name, value, low_open=True):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not ((0 < value) if low_open else (0 <= value))
        or not value < 1
    ):
        raise ValueError(
            f"`{name}` must be a fraction of the training steps in "
            f"{'(0' if low_open else '[0'}, 1). Received: {name}={value!r}"
        )
    return float(value)


class JointLinearizationCallback(keras.callbacks.Callback):
    """Learns every linearization at once during one `fit`, to a target.

    Each candidate collapsible activation's slope `alpha` (`y = alpha * x +
    (1 - alpha) * act(x)`) is a gate in [0, 1], trained by the model's own
    optimizer at its own learning-rate scale (`gate_lr_scale`). Over the
    fit's training steps:

    1. **Search** (the first `search` share): a budget controller pulls
       every gate up, by a multiplier that grows while the gates' budget is
       short of the target and shrinks when it is past it (dual ascent on
       the budget constraint: no weight to tune). The gates the loss needs
       least rise first.
    2. **Polarize** (the next `polarize` share): the current best set (the
       top gates; with "depth" / "latency", the best merge units until the
       target is priced) is pushed to 1, the rest to 0.
    3. **Hard set**: exactly the chosen ones are locked to the identity and
       the rest pinned at their original activation (`alpha = 0`); with
       `data`, BatchNorm's moving statistics are re-estimated
       (`recalibrate_batchnorm`). **Recovery**: the rest of the fit trains
       with the set fixed; BatchNorm is re-estimated again at the end.

    Follow with `keras_collapse.surgery` (or use `keras_collapse.collapse`,
    which does the whole flow).

    The gates must be trainable when the model is compiled:
    `keras_collapse.make_collapsible(model, trainable_alpha=True)`. The
    callback sets each gate's `alpha_scale` and its range [0, 1] itself. It
    also works while fitting a `keras.distillation.Distiller` whose student
    is the collapsible model.

    Logs each epoch `joint_gate_mean`, `joint_gates_open` (gates past 0.5),
    `joint_multiplier`, `joint_linearized` (locked after the hard set) and
    `joint_set_changes` (how often the chosen set changed while polarizing);
    records `linearized`, `kept`, `events` (dicts with "epoch", "action",
    "layers" and details), `gate_history` (per epoch, {name: gate}). One
    instance serves several `fit` calls; a fit resumed from a model saved
    mid-way (`fit(initial_epoch=...)`) picks up from the saved gates.

    Args:
        target: float in (0, 1], the fraction to remove: of the candidate
            activations (rounded up, "activations"), of the BN-folded
            model's real depth ("depth"), or of its latency under
            `cost_model` ("latency"). Defaults to `0.5`.
        objective: "activations", "depth" or "latency". With "depth" and
            "latency" the candidates are the members of merge units
            (`keras_collapse.merge_units`), each unit's members pulled by
            what the unit saves, and the chosen set is priced by the
            surgery's own dry runs. Defaults to `"activations"`.
        data: training inputs (arrays `x` or `(x, y)`, tf.data, PyDataset,
            any iterable of batches) for BatchNorm re-estimation and data
            priors; a fixed sample of `samples` rows is drawn once.
            Defaults to `None` (no re-estimation: call
            `recalibrate_batchnorm` after `fit`).
        search: float in (0, 1), the share of the training steps spent
            searching. Defaults to `0.5`.
        polarize: float in (0, 1), the share spent pushing the chosen set
            to 1 and the rest to 0; `search + polarize` must leave room for
            recovery. Defaults to `0.25`.
        gate_lr_scale: float > 0 or "auto", the gates' own learning-rate
            scale (their `alpha_scale`: a gate moves up to `gate_lr_scale x
            learning_rate` per Adam step). "auto" picks the power of two at
            which a gate can cross [0, 1] twice during the search, from the
            optimizer's learning rate at train begin and the steps of the
            fit: the same behaviour from Adam 1e-4 to 3e-3. Defaults to
            `"auto"`.
        prior: None, "tlc", "easier" or a scorer (see
            `keras_collapse.scores`): scores measured at train begin rank
            the candidates; the safer ones are pulled up to 1.5x as fast
            (0.5x for the least safe) and win ties. "tlc" reads
            BatchNormalization (or, with `data`, measured statistics);
            "easier" needs `data`. Defaults to `None`.
        candidates: list of activation names that may be linearized, or
            None for every collapsible activation not yet linear. Defaults
            to `None`.
        exact: bool, the surgery's `exact`, for the merge units. Defaults
            to `True`.
        cost_model: the surgery's cost model, for "latency" (`MacCostModel`
            or `MeasuredCostModel`). Defaults to `None` (MACs).
        samples: int, rows of the fixed data sample. Defaults to `1024`.
        batch_size: int, batch size of the measurements. Defaults to `128`.
        seed: int, for the sample. Defaults to `0`.
        verbose: 0 or 1, a line per epoch and at each phase. Defaults to
            `1`.

    Raises:
        ValueError: for bad arguments; at `on_train_begin`, before any
            change: no collapsible activation, gates that are not
            trainable, data that do not fit, no merge unit, or a depth /
            latency target no set of merge units reaches (the message says
            the most that can be).

    Example:

    >>> model = keras_collapse.make_collapsible(model, trainable_alpha=True)
    >>> model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    >>> joint = keras_collapse.JointLinearizationCallback(0.5, data=x_train)
    >>> model.fit(x_train, y_train, epochs=4, callbacks=[joint])
    >>> small = keras_collapse.surgery(model)  # half the activations merged

    Reference:
        DepthShrinker, arXiv 2206.00843; SNL (selective network
        linearization); CoFi, arXiv 2204.00408; LayerMerge, arXiv 2406.06880.
    """

    method = "JointLinearizationCallback"
    log_prefix = "joint"

    def __init__(
        self,
        target=0.5,
        objective="activations",
        *,
        data=None,
        search=0.5,
        polarize=0.25,
        gate_lr_scale="auto",
        prior=None,
        candidates=None,
        exact=True,
        cost_model=None,
        samples=1024,
        batch_size=128,
        seed=0,
        verbose=1,
    ):
        super().__init__()
        self.target = check_target(target)
        self.objective = check_objective(objective)
        self.search = _check_share("search", search)
        self.polarize = _check_share("polarize", polarize)
        if self.search + self.polarize >= 1:
            raise ValueError(
                "`search + polarize` must be below 1, leaving steps to recover "
                f"with the set fixed. Received: search={search}, polarize={polarize}"
            )
        if not (
            gate_lr_scale == "auto"
            or (
                isinstance(gate_lr_scale, (int, float))
                and not isinstance(gate_lr_scale, bool)
                and 0 < gate_lr_scale < math.inf
            )
        ):
            raise ValueError(
                "`gate_lr_scale` must be 'auto' or a finite number > 0. "
                f"Received: gate_lr_scale={gate_lr_scale!r}"
            )
        if prior is not None and not (
            (isinstance(prior, str) and prior in PRIORS) or callable(prior)
        ):
            raise ValueError(
                f"`prior` must be None, one of {list(PRIORS)} or a scorer. "
                f"Received: prior={prior!r}"
            )
        if prior == "easier" and data is None:
            raise ValueError(
                "`prior='easier'` measures entropy over data: pass `data=`. "
                "Received: data=None"
            )
        if candidates is not None and (
            isinstance(candidates, str)
            or not all(isinstance(c, str) for c in candidates)
        ):
            raise ValueError(
                "`candidates` must be a list of activation layer names or None. "
                f"Received: candidates={candidates!r}"
            )
        if not isinstance(exact, bool):
            raise ValueError(f"`exact` must be True or False. Received: {exact!r}")
        if cost_model is not None and not callable(cost_model):
            raise ValueError(
                "`cost_model` must be callable as cost_model(kind, kernel_shape, "
                f"output_positions), or None. Received: {cost_model!r}"
            )
        for name, value, minimum in (
            ("samples", samples, 1),
            ("batch_size", batch_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}"
                )
        if data is not None and isinstance(data, (int, float, str, bytes)):
            raise ValueError(
                "`data` must be arrays or an iterable of batches. Received: "
                f"{type(data).__name__}"
            )
        self.data = data
        self.gate_lr_scale = gate_lr_scale
        self.prior = prior
        self.candidates = None if candidates is None else list(candidates)
        self.exact = exact
        self.cost_model = cost_model
        self.samples = samples
        self.batch_size = batch_size
        self.seed = seed
        self.verbose = verbose

    # ----------------------------------------------------------- set-up
    def on_train_begin(self, logs=None):
        self.events, self.gate_history = [], []
        self.linearized, self.kept, self.chosen = [], [], []
        self.multiplier, self.set_changes = None, 0
        self._trainer = self.model
        self._student = student_of(self.model)
        self._layers = self._candidate_layers()
        self._check_trainable()
        self._sample = None
        if self.data is not None:
            n_inputs = len(self._student.inputs)
            self._sample = data_lib.take_sample(
                self.data, self.samples, self.seed, n_inputs=n_inputs, what="data"
            )[0]
            data_lib.check_inputs(self._student, self._sample, "data")
        self._budget_setup()
        recalibrator = (
            BatchNormRecalibrator(self._student) if self._sample is not None else None
        )
        self._recalibrator = (
            recalibrator if recalibrator and recalibrator.layers else None
        )
        self._prior_ranks = self._priors()
        self._step = None  # set at the first epoch (a resumed fit starts later)
        self._phase = None
        self._hard = None

    def _candidate_layers(self):
        pairs = find_pairs(self._student)
        if not pairs:
            raise ValueError(
                f"{self.method} found no collapsible activation in model "
                f"'{self._student.name}'. Convert its activations first: "
                "`model = keras_collapse.make_collapsible(model, "
                "trainable_alpha=True)` (then compile and fit that model)."
            )
        names = [p.activation.name for p in pairs]
        unknown = sorted(set(self.candidates or ()) - set(names))
        if unknown:
            raise ValueError(
                "`candidates` names layers that are not collapsible activations "
                f"of model '{self._student.name}': {unknown}. Available: {names}"
            )
        allowed = set(self.candidates) if self.candidates is not None else None
        layers = [
            p.activation
            for p in pairs
            if (allowed is None or p.activation.name in allowed)
            and (not p.activation.is_locked or p.activation.alpha_range == CHOSEN)
            and not (p.activation.alpha_range is None and p.activation.is_linear)
        ]
        self._decided = bool(layers) and all(
            layer.alpha_range in (CHOSEN, PINNED) for layer in layers
        )
        if not self._decided:  # a set chosen before is not chosen again
            layers = [layer for layer in layers if not layer.is_locked]
        if not layers:
            raise ValueError(
                f"{self.method}: every collapsible activation of model "
                f"'{self._student.name}' is linear already; nothing to learn."
            )
        return layers

    def _check_trainable(self):
        trainable = {id(v) for v in self._trainer.trainable_variables}
        frozen = [
            layer.name for layer in self._layers if id(layer.alpha) not in trainable
        ]
        if frozen:
            raise ValueError(
                f"{self.method} trains each activation's slope as a gate, but "
                f"the slopes of {frozen[:5]}{' ...' if len(frozen) > 5 else ''} "
                "are not trainable variables of the compiled model. Convert with "
                "`keras_collapse.make_collapsible(model, trainable_alpha=True)` "
                "(or use `keras_collapse.collapse`, which does it) and compile "
                "that model."
            )

    def _budget_setup(self):
        if self._decided:  # nothing left to choose: a fit resumed after the set
            self.budget = None
            return
        sync_training_state(self._trainer)
        try:
            self.budget = Budget.plan(
                self._student,
                [layer.name for layer in self._layers],
                self.objective,
                self.target,
                self.exact,
                self.cost_model,
            )
        except ValueError as e:
            raise ValueError(f"{self.method}: {e}") from None
        kept = set(self.budget.names)
        self._layers = [layer for layer in self._layers if layer.name in kept]

    def _priors(self):
        """Per candidate, the prior's rank in [0, 1] (0 safest), or None."""
        if self.prior is None or self._decided:
            return None
        if self.prior == "tlc":
            scorer = GaussianScorer() if self._sample is not None else BatchNormScorer()
        elif self.prior == "easier":
            scorer = EntropyScorer()
        else:
            scorer = as_scorer(self.prior)
        pairs = [p for p in find_pairs(self._student) if p.activation in self._layers]
        context = DecisionContext(
            self._student,
            trainer=self._trainer,
            data=self._sample,
            rng=np.random.default_rng(self.seed),
            batch_size=self.batch_size,
            verbose=self.verbose,
        )
        sync_training_state(self._trainer)
        ranked = scorer(context, pairs)
        order = {s.pair.activation.name: i for i, s in enumerate(ranked)}
        last = max(len(ranked) - 1, 1)
        # Unscored candidates rank last.
        return np.array(
            [order.get(layer.name, last) / last for layer in self._layers], float
        )

    # ----------------------------------------------------------- phases
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

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._step is None:
            self._start(epoch)
        elif not self._total and self._hard is None:
            if self._phase_at(0, epoch) == RECOVERY:
                self._hard_set(epoch)
            else:
                self._phase = self._phase_at(0, epoch)

    def _start(self, epoch):
        """Configures the gates for this fit (or finds a hard set made in a
        fit this one resumes)."""
        self._plan(epoch)
        phase = self._phase_at(self._step, epoch)
        sync_training_state(self._trainer)
        if self._decided:
            # Resumed after the hard set (or fit again): the set is the model's.
            self._hard = epoch
            self.chosen = [
                layer.name for layer in self._layers if layer.alpha_range == CHOSEN
            ]
            self.linearized = list(self.chosen)
            self.kept = [n.name for n in self._layers if n.name not in self.chosen]
            self._phase = RECOVERY
            self._event(epoch, "resumed", self.chosen, phase=RECOVERY)
            return
        for layer in self._layers:
            layer.set_alpha_scale(self._scale)
            layer.set_alpha_range((0.0, 1.0))
        rebuild_train_function(self._trainer)
        self._phase = phase
        self._event(
            epoch,
            "started",
            [layer.name for layer in self._layers],
            phase=phase,
            gate_lr_scale=self._scale,
            learning_rate=self._lr,
            gate_step=self._adam_step,
            needed=self.budget.needed,
            objective=self.objective,
        )
        if phase == RECOVERY:
            self._hard_set(epoch)

    # ----------------------------------------------------------- each step
    def on_train_batch_end(self, batch, logs=None):
        if self._step is None or self._hard is not None:
            if self._step is not None:
                self._step += 1
            return
        self._step += 1
        phase = self._phase_at(self._step, self._epoch)
        if phase == RECOVERY:
            self._hard_set(self._epoch)
            return
        sync_training_state(self._trainer)
        gates = self._gates()
        if phase != self._phase:
            self._phase = phase
            self._event(self._epoch, "polarizing", self._select(gates))
        if phase == SEARCH:
            self._pull(gates)
        else:
            self._polarize(gates)

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

    def _settling(self):
        if not self._total:
            return self._epoch < (self._search_epochs + self._hard_epoch) / 2
        return self._step < (self._search_end + self._hard_step) / 2

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

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self._step is None:
            return
        if (
            not self._total
            and self._hard is None
            and self._phase_at(0, epoch + 1) == RECOVERY
        ):
            self._hard_set(epoch)
        sync_training_state(self._trainer)
        gates = self._gates()
        self.gate_history.append(
            {layer.name: float(g) for layer, g in zip(self._layers, gates)}
        )
        prefix = self.log_prefix
        logs[f"{prefix}_gate_mean"] = float(gates.mean())
        logs[f"{prefix}_gates_open"] = float(np.sum(gates > 0.5))
        logs[f"{prefix}_multiplier"] = self._multiplier_value()
        logs[f"{prefix}_linearized"] = float(len(self.linearized))
        logs[f"{prefix}_set_changes"] = float(self.set_changes)
        if self.verbose:
            print("\n" + self._epoch_line(epoch, gates))

    def on_train_end(self, logs=None):
        if self._step is None:
            return
        if self._hard is None:
            self._hard_set(self._epoch)
        else:
            self._recalibrate()

    # ----------------------------------------------------------- records
    def _multiplier_value(self):
        return 0.0 if self.multiplier is None else float(self.multiplier.value)

    def _epoch_line(self, epoch, gates):
        done = f"{len(self.linearized)} linearized" if self._hard is not None else ""
        head = f"Epoch {epoch + 1}: {self.method} {self._phase}"
        if self.budget is None:
            need = "the saved set"
        elif self.budget.units is None:
            need = f"{self.budget.needed:g}/{len(self._layers)}"
        else:
            need = f"{self.objective} {self.budget.needed:g} of {self.budget.total:g}"
        parts = [
            f"mean gate {gates.mean():.2f}",
            f"{int(np.sum(gates > 0.5))}/{len(gates)} past 0.5",
            f"multiplier {self._multiplier_value():.2f}",
            f"target {need}",
        ]
        if done:
            parts.append(done)
        return f"{head}: " + ", ".join(parts) + "."

    def _event(self, epoch, action, layers, **details):
        event = {
            "epoch": None if epoch is None else epoch + 1,
            "action": action,
            "layers": list(layers),
            **details,
        }
        self.events.append(event)
        if self.verbose and action != "started":
            what = ", ".join(layers) if layers else "(none)"
            print(f"\n{self.method} {action}: {what}.")
