"""NEPENTHECallback: entropy-guided pruning (whole channels behind a
BatchNormalization, single weights elsewhere) that drives layers to (near)
zero entropy, then linearizes them, on the shared decision engine.

What a round prunes in one layer is `nepenthe_targets`', one round (prune
or linearize) `nepenthe_rounds`', the rounds seen (`history`, `table`,
`plot`) `nepenthe_history`'s."""

import math

from keras_collapse.actions.prune import prunable_layers
from keras_collapse.callbacks.engine import LinearizationCallback
from keras_collapse.callbacks.nepenthe_history import RoundHistory
from keras_collapse.callbacks.nepenthe_rounds import CONFIDENCE  # noqa: F401
from keras_collapse.callbacks.nepenthe_rounds import Rounds
from keras_collapse.callbacks.nepenthe_targets import LAYER_CAP  # noqa: F401
from keras_collapse.callbacks.nepenthe_targets import PruneTarget
from keras_collapse.checks import check_bool
from keras_collapse.checks import check_choice
from keras_collapse.checks import check_fraction
from keras_collapse.scores.scorers import EntropyScorer

# The entropy (bits) at or below which a layer is linearized: that of a
# channel ON (or OFF) with TLC's confidence, H(0.05) = 0.2864 bits.
ZERO_ENTROPY = 0.286


class NEPENTHECallback(RoundHistory, Rounds, LinearizationCallback):
    """NEPENTHE: prunes during `fit`, most where the ON/OFF entropy is
    lowest, until layers reach (near) zero entropy and are linearized.

    The candidates are the collapsible activations fed by a Conv/Dense/
    DepthwiseConv kernel (`prunable_layers`). At each decision (after
    `warmup_epochs`, then every `interval` epochs: every epoch by default,
    a round acting at once):

    1. The ON/OFF entropy H_l of every candidate is measured on a fixed
       sample of `data` (`activation_statistics`, inference mode).
    2. Every candidate whose entropy is at most `zero_entropy` is
       linearized, and nothing is pruned at this decision (so that a
       rollback blames the linearization): the channels ON at most 5 % of
       the time (TLC's confidence, `CONFIDENCE`) are zeroed, at their
       BatchNormalization or, without one, in the kernel and bias feeding
       them; the others pass.
    3. Otherwise, with `trial=True` (the default) and a pre-check (see
       `precheck`), the candidate (merge unit) with the lowest entropy is
       linearized as a trial, its OFF channels zeroed as above: the
       pre-check measures it at once on the sample and keeps it when the
       monitored drop is within `tolerance`. A refused trial is undone, the
       layer stays a candidate (tried again at the next decision, pruned
       further by then) and the same decision goes on to step 4.
    4. Otherwise the others get the score s_l = H_l * mean |w| over the
       kernel weights they have left (behind a BN, mean |gamma| over the
       channels left: the BN makes the kernel's scale meaningless), and
       `round(prune_fraction * remaining)` of all they have left (channels,
       or weights with `granularity="weights"`) are pruned, shared by
       `allocate_budget`: softmax(S / s_l), S = sum of the scores, each
       share capped at `LAYER_CAP` (half) of what a layer has left. A layer
       with nothing left is out of the share.

    Where pruning acts. Behind a BatchNormalization, pruning kernel weights
    does not move the entropy: the BN re-normalizes whatever is left, so a
    channel stays a coin toss until its whole kernel column is gone
    (measured on a digits CNN: 0.98-0.99 bits at 50-75 % kernel sparsity,
    0.84 at 89 %, nothing linearized on any backend). There a layer's
    share is pruned in whole channels at the BN's output: the channels
    with the smallest |gamma| among those not at zero entropy yet get
    gamma and beta held at zero,
    so they are exactly 0 (always OFF, entropy 0; the surgery cuts them).
    Without a BN, the same in the kernel column and bias (smallest mean
    |w| first). The budget is then counted in channels: counted in
    weights, a small kernel (a first conv's 9 weights a channel) lost half
    its channels in every round. `granularity="weights"` prunes single
    kernel weights instead, smallest |w| first (the paper's unstructured
    pruning); there a depthwise kernel (9 weights a channel) also loses at
    most half of each channel's remaining weights in one round.
    The criterion. A layer whose channels are each ON (or OFF) with TLC's
    95 % confidence has entropy at most H(0.05) = 0.286 bits: the default
    `zero_entropy`. With `zero_entropy=1e-6`, only layers linear on the
    whole sample are taken (the paper's zero). Why the trial: in a short
    fine-tune no conv+BN layer reaches that threshold (under BN a channel
    stays a coin toss until it is pruned, so 0.286 bits takes 71 % of a
    layer's channels, more than the tolerance allows: 0 of 19 on the
    comparison table's ResNet-20 in 4 epochs). The entropy still picks the
    layer; whether it is low enough is measured by the pre-check, on the
    model, instead of read off a fixed threshold. `trial=False` keeps the
    threshold alone (the paper's rule).

    With `objective="depth"` / `"latency"`, groups are merge units: a
    round's budget goes to the members of one unit together (the one with
    the lowest summed entropy per unit of gain), and a unit is linearized
    when all of its members reached `zero_entropy`.

    A round is judged like any change of the engine: the pre-check (at once)
    and the guard (at the next decision). A round that costs too much is
    undone, weights and masks, the layers it linearized are kept nonlinear
    (`kept`) and leave the candidate set, and the next rounds prune half
    the fraction (the same round again would fail again); each round kept
    doubles it again, up to `prune_fraction`. `patience` rollbacks in a row
    stop it.
    Follow with `keras_collapse.surgery`: the linearized layers are merged,
    the masks dropped, pruned channels cut where the surgery can.

    Logs each epoch `nepenthe_sparsity` (the pruned share of all candidate
    kernels; a pruned channel counts its kernel column),
    `nepenthe_prune_fraction` (the fraction of the next round),
    `nepenthe_linearized` and `nepenthe_rollbacks`; with
    `per_layer_logs=True` also `nepenthe_sparsity_<layer>` per kernel layer
    (its pruned share: of its channels, or of its kernel) and
    `nepenthe_entropy_<act>` per activation (the last measurement; NaN
    before the first). `events` holds one entry per round ("pruned":
    entropy, score, remaining, pruned and `where` ("channels" or
    "weights") per activation; "linearized": the layers and their OFF
    channels);
    `history()`, `table()` and `plot()` show entropy and sparsity per
    layer over the rounds.

    Args:
        data: the inputs (arrays `x` or `(x, y)`, labels ignored; tf.data,
            PyDataset, DataLoader or any iterable of batches).
        validation_data: labelled `(x, y)` data for the guard, or None.
            Defaults to `None`.
        prune_fraction: float in (0, 1), the fraction of what the
            candidates have left (channels, or weights) pruned per round.
            Defaults to `0.5`.
        samples: int, the rows of the fixed samples. Defaults to `1024`.
        zero_entropy: float >= 0, the entropy (bits) at or below which a
            layer is linearized. Defaults to `0.286` (`ZERO_ENTROPY`, see
            above).
        granularity: "channels" (whole channels, at the BatchNormalization
            where there is one) or "weights" (single kernel weights).
            Defaults to `"channels"`.
        trial: bool, whether a decision with no layer at `zero_entropy`
            first tries linearizing the lowest-entropy candidate, kept if the
            pre-check accepts it (step 3; needs the pre-check, so data or
            validation data). Defaults to `True`.
        per_layer_logs: bool, whether to add the per-layer sparsity and
            entropy to the epoch logs (each Keras progress line grows by two
            entries per candidate; `events` and `history()` hold them
            anyway). Defaults to `False`.
        **kwargs: the engine's arguments (see `LinearizationCallback`):
            `warmup_epochs` (1), `interval` (1 here), `monitor`, `tolerance`,
            `patience` (3), `max_layers` (the most activations linearized),
            `candidates`, `recalibrate`, `batch_size`, `seed`, `verbose`,
            `objective` ("depth" / "latency": merge units, see above),
            `exact`, `cost_model`, `precheck`. A round acts at once
            (`ramp_epochs` is 0); its pace is `prune_fraction`
            (`per_decision` stays 1).

    Raises:
        ValueError: for bad arguments; at `on_train_begin` (before any
            change), if no collapsible activation has a kernel to prune.

    Example:

        nepenthe = keras_collapse.NEPENTHECallback(x_train[:2048], (x_val, y_val))
        model.fit(x_train, y_train, epochs=12, callbacks=[nepenthe])
        print(nepenthe.table())
        small = keras_collapse.surgery(model)

    Reference:
        NEPENTHE, arXiv 2404.16890; EGP, arXiv 2308.06619.
    """

    method = "NEPENTHECallback"
    log_prefix = "nepenthe"

    def __init__(
        self,
        data,
        validation_data=None,
        prune_fraction=0.5,
        *,
        samples=1024,
        zero_entropy=ZERO_ENTROPY,
        per_layer_logs=False,
        granularity="channels",
        trial=True,
        **kwargs,
    ):
        if data is None:
            raise ValueError(
                "NEPENTHECallback measures ON/OFF entropy over data: pass "
                "`data=x_sample` (a few thousand training inputs). Received: "
                "data=None"
            )
        prune_fraction = check_fraction(
            "prune_fraction",
            prune_fraction,
            what="the fraction of the remaining weights pruned per round",
        )
        if kwargs.get("ramp_epochs", 0) != 0:
            raise ValueError(
                "NEPENTHECallback acts at once: `ramp_epochs` must be 0. "
                f"Received: ramp_epochs={kwargs['ramp_epochs']!r}"
            )
        if kwargs.get("per_decision", 1) != 1:
            raise ValueError(
                "NEPENTHECallback linearizes every layer that reached zero "
                "entropy; its pace is `prune_fraction`: leave `per_decision` "
                f"at 1. Received: per_decision={kwargs['per_decision']!r}"
            )
        self.per_layer_logs = check_bool("per_layer_logs", per_layer_logs)
        self.trial = check_bool("trial", trial)
        self.granularity = check_choice(
            "granularity", granularity, ["channels", "weights"]
        )
        kwargs["ramp_epochs"] = 0
        # A round acts at once: one epoch of recovery, then it is judged.
        kwargs.setdefault("interval", 1)
        self.prune_fraction = prune_fraction
        self.zero_entropy = zero_entropy
        super().__init__(
            EntropyScorer(zero_entropy),
            data=data,
            validation_data=validation_data,
            samples=samples,
            **kwargs,
        )

    # ------------------------------------------------------------- lifecycle
    def on_train_begin(self, logs=None):
        # Before the engine's checks: its candidates are those with a kernel.
        self._kernels = {}  # activation name -> its kernel layer
        self._targets = {}  # activation name -> what its rounds prune
        for entry in prunable_layers(self.model):
            if entry.layer is not None:
                self._kernels[entry.activation.name] = entry.layer
                self._targets[entry.activation.name] = PruneTarget.of(
                    entry, self.granularity
                )
        super().on_train_begin(logs)
        self.rounds = []
        self.fraction = self.prune_fraction  # halved by each rolled back round
        self._tried_at = None  # the decision (its context) of the last trial
        self._entropy = {}
        allowed = set(self.candidates) if self.candidates is not None else None
        usable = [n for n in self._kernels if allowed is None or n in allowed]
        if not usable:
            skipped = {
                e.activation.name: e.reason
                for e in prunable_layers(self.model)
                if e.layer is None
            }
            raise ValueError(
                f"NEPENTHECallback found no collapsible activation of model "
                f"'{self.model.name}' fed by a Conv/Dense/DepthwiseConv kernel "
                f"it could prune{' among `candidates`' if allowed else ''}. "
                f"Not prunable: {skipped}"
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        super().on_epoch_end(epoch, logs)
        prefix = self.log_prefix
        logs[f"{prefix}_sparsity"] = self._overall()
        logs[f"{prefix}_prune_fraction"] = self.fraction
        if not self.per_layer_logs:
            return
        for act, layer in self._kernels.items():
            logs[f"{prefix}_sparsity_{layer.name}"] = self._targets[act].pruned()
            logs[f"{prefix}_entropy_{act}"] = float(self._entropy.get(act, math.nan))

    # ------------------------------------------------------------ one round
    def make_change(self, decision):
        """One NEPENTHE round: linearize the candidates (or the merge unit)
        whose entropy reached `zero_entropy`; else prune the others, more
        where the entropy is lower (see the class)."""
        last = self.rounds[-1] if self.rounds else None
        if (
            last is not None
            and not last["rolled_back"]
            and last["epoch"] <= decision.epoch
        ):
            # The last round was kept (judged at this decision, or earlier):
            # the pace recovers toward `prune_fraction`.
            self.fraction = min(self.prune_fraction, 2 * self.fraction)
        stats = decision.context.statistics(decision.pool)
        by_name = {s.name: s for s in stats}
        measured = []
        for pair in decision.pool:
            s = by_name.get(pair.activation.name)
            if s is None:
                continue
            if not math.isfinite(s.entropy):
                decision.context.skip(s.name, "non-finite statistics")
                continue
            self._entropy[s.name] = s.entropy
            measured.append(pair)
        groups = self._groups(decision, measured)
        if not groups:
            return decision.stop("no candidate left")
        ready = [
            g
            for g in groups
            if all(by_name[p.activation.name].entropy <= self.zero_entropy for p in g)
        ]
        if ready:
            return self._linearize_round(decision, ready, by_name)
        trial = self._trial_round(decision, groups, by_name)
        if trial is not None:
            return trial
        return self._prune_round(decision, groups, by_name)
