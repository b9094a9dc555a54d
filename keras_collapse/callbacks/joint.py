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

The callback is put together from its set-up at train begin
(`joint_setup`), its phase plan (`joint_phases`) and its gates
(`joint_gates`); the budget and its multiplier are `budget`'s.
"""

import keras
import numpy as np

from keras_collapse import data as data_lib
from keras_collapse.actions.linearize import rebuild_train_function
from keras_collapse.actions.recalibrate import BatchNormRecalibrator
from keras_collapse.callbacks.arguments import check_candidates
from keras_collapse.callbacks.arguments import check_cost_model
from keras_collapse.callbacks.arguments import check_data
from keras_collapse.callbacks.budget import check_target
from keras_collapse.callbacks.context import student_of
from keras_collapse.callbacks.joint_gates import CHOSEN  # noqa: F401
from keras_collapse.callbacks.joint_gates import PINNED  # noqa: F401
from keras_collapse.callbacks.joint_gates import Gates
from keras_collapse.callbacks.joint_phases import CROSSINGS  # noqa: F401
from keras_collapse.callbacks.joint_phases import POLARIZE  # noqa: F401
from keras_collapse.callbacks.joint_phases import RECOVERY
from keras_collapse.callbacks.joint_phases import SEARCH
from keras_collapse.callbacks.joint_phases import Phases
from keras_collapse.callbacks.joint_setup import JointPreparation
from keras_collapse.checks import check_bool
from keras_collapse.checks import check_fraction
from keras_collapse.checks import check_int
from keras_collapse.checks import check_number
from keras_collapse.collapsible import sync_training_state
from keras_collapse.surgery.units import check_objective

PRIORS = ("tlc", "easier")


class JointLinearizationCallback(
    Gates, Phases, JointPreparation, keras.callbacks.Callback
):
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

        model = keras_collapse.make_collapsible(model, trainable_alpha=True)
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        joint = keras_collapse.JointLinearizationCallback(0.5, data=x_train)
        model.fit(x_train, y_train, epochs=4, callbacks=[joint])
        small = keras_collapse.surgery(model)  # half the activations merged

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
        share = "a fraction of the training steps"
        self.search = check_fraction("search", search, what=share)
        self.polarize = check_fraction("polarize", polarize, what=share)
        if self.search + self.polarize >= 1:
            raise ValueError(
                "`search + polarize` must be below 1, leaving steps to recover "
                f"with the set fixed. Received: search={search}, polarize={polarize}"
            )
        if gate_lr_scale != "auto":
            check_number(
                "gate_lr_scale", gate_lr_scale, 0, low_open=True, what="or 'auto'"
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
        self.data = check_data("data", data)
        self.gate_lr_scale = gate_lr_scale
        self.prior = prior
        self.candidates = check_candidates(candidates)
        self.exact = check_bool("exact", exact)
        self.cost_model = check_cost_model(cost_model)
        self.samples = check_int("samples", samples, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
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
