"""NEPENTHECallback: entropy-guided pruning (whole channels behind a
BatchNormalization, single weights elsewhere) that drives layers to (near)
zero entropy, then linearizes them, on the shared decision engine."""

import math

import keras
import numpy as np

from keras_collapse.callbacks.change import Change
from keras_collapse.callbacks.engine import LinearizationCallback
from keras_collapse.collapsible import sync_training_state
from keras_collapse.linearize import linearize_pairs
from keras_collapse.linearize import rebuild_train_function
from keras_collapse.masks import held_mask
from keras_collapse.masks import hold_at_zero
from keras_collapse.prune import allocate_budget
from keras_collapse.prune import output_channels
from keras_collapse.prune import prunable_layers
from keras_collapse.prune import prune_by_count
from keras_collapse.scores.scorers import EntropyScorer
from keras_collapse.scores.statistics import binary_entropy

_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
# The most of what a layer has left that one round may prune: uncapped, the
# softmax gave the lowest-score layer its whole kernel in the first round of
# a 6-epoch fine-tune (training accuracy 0.099 until the rollback).
LAYER_CAP = 0.5
# A channel is OFF (zeroed when its layer is linearized) when it was ON at
# most 1 - CONFIDENCE of the time on the sample: TLC's P(OFF) >= 0.95.
CONFIDENCE = 0.95
# The entropy (bits) at or below which a layer is linearized: that of a
# channel ON (or OFF) with TLC's confidence, H(0.05) = 0.2864 bits.
ZERO_ENTROPY = 0.286


class _Target:
    """What the rounds of one candidate prune, and how much is left.

    "channels": whole output channels, each made exactly 0 (always OFF,
    entropy 0; the surgery can cut it): behind a BatchNormalization its
    gamma and beta are held at zero (the BN re-normalizes whatever is left
    of a pruned kernel, so single weights do not move its channels' states:
    0.99 bits at 86 % kernel sparsity on a digits CNN), without one the
    kernel column and bias. Only channels not at zero entropy yet are
    pruned, the smallest first (|gamma|, else the column's mean |w|); the
    budget is counted in channels.

    "weights": single kernel weights, smallest |w| first (the paper's
    unstructured pruning); a depthwise kernel (a few weights a channel)
    loses at most `LAYER_CAP` of each channel's remaining weights in one
    round.
    """

    def __init__(self, layer, batchnorm, where):
        self.layer, self.where = layer, where
        self.batchnorm = (
            batchnorm if batchnorm is not None and batchnorm.scale else None
        )
        self.size = int(np.prod(tuple(layer.kernel.shape)))
        self.channels = output_channels(layer)
        self.per_channel = self.size // self.channels
        self.depthwise = isinstance(layer, _DEPTHWISE)

    @classmethod
    def of(cls, entry, granularity):
        layer, bn = entry.layer, entry.batchnorm
        if granularity == "weights":
            return cls(layer, None, "weights")
        if bn is not None and int(bn.gamma.shape[0] if bn.scale else -1) != (
            output_channels(layer)
        ):
            bn = None  # no gamma along the channels: the kernel columns
        return cls(layer, bn, "channels")

    @property
    def label(self):
        return f"'{(self.batchnorm or self.layer).name}'"

    def held(self):
        """Per channel ("channels") or per kernel weight: what is pruned."""
        if self.where == "weights":
            return held_mask(self.layer, "kernel")
        if self.batchnorm is not None:
            return held_mask(self.batchnorm, "gamma")
        return held_mask(self.layer, "kernel").reshape(-1, self.channels).all(axis=0)

    def pruned(self):
        """The fraction pruned (of the channels, or of the kernel)."""
        return float(self.held().mean())

    def remaining(self):
        """What is left to prune: channels, or kernel weights."""
        return int((~self.held()).sum())

    def cap(self):
        """The most one round may prune: `LAYER_CAP` of what is left."""
        return math.ceil(LAYER_CAP * self.remaining())

    def magnitude(self):
        """Mean |w| over the kernel weights left (of the channels left);
        behind a BatchNormalization, mean |gamma| over the channels left:
        the BN makes the kernel's scale meaningless (the smallest kernels,
        of the widest layers, drew the whole budget)."""
        if self.batchnorm is not None:
            gamma = np.abs(keras.ops.convert_to_numpy(self.batchnorm.gamma))
            left = gamma[~self.held()]
            return float(np.mean(left)) if left.size else 0.0
        kernel = np.abs(keras.ops.convert_to_numpy(self.layer.kernel))
        if self.where == "channels":
            columns = kernel.reshape(-1, self.channels)[:, ~self.held()]
            return float(np.mean(columns)) if columns.size else 0.0
        free = ~self.held()
        return float(np.mean(kernel[free])) if free.any() else 0.0

    def prune(self, model, count, stats, zero_entropy):
        """Prunes about `count` weights (whole channels: `count` over the
        weights a channel has, rounded); returns (pruned, records)."""
        if count <= 0:
            return 0, []
        if self.where == "weights":
            cap = LAYER_CAP if self.depthwise else None
            done = prune_by_count(model, {self.layer.name: count}, channel_cap=cap)
            return sum(d.pruned for d in done), done
        held = self.held()
        n = min(count, self.cap())
        chosen = np.flatnonzero(~held & (binary_entropy(stats.p_on) > zero_entropy))
        if self.batchnorm is not None:
            size = np.abs(keras.ops.convert_to_numpy(self.batchnorm.gamma))
        else:
            kernel = np.abs(keras.ops.convert_to_numpy(self.layer.kernel))
            size = kernel.reshape(-1, self.channels).mean(axis=0)
        chosen = chosen[np.argsort(size[chosen], kind="stable")][:n]
        if not len(chosen):
            return 0, []
        mask = np.zeros(self.channels, bool)
        mask[chosen] = True
        sync_training_state(model)
        if self.batchnorm is not None:
            records = [hold_at_zero(self.batchnorm, "gamma", mask)]
            if self.batchnorm.center:
                records.append(hold_at_zero(self.batchnorm, "beta", mask))
            return len(chosen), records
        return len(chosen), _zero_columns(self.layer, mask)


def _zero_columns(layer, off):
    """Holds the kernel column (and bias) of each `off` channel at zero."""
    shape = tuple(layer.kernel.shape)
    if output_channels(layer) != len(off):
        return []
    columns = np.broadcast_to(off, (int(np.prod(shape)) // len(off), len(off)))
    records = [hold_at_zero(layer, "kernel", columns.reshape(shape))]
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        records.append(hold_at_zero(layer, "bias", off))
    return records


class _RoundUndo:
    """A rolled-back round: marked in `rounds`; the next prune half as much
    (the same round again would fail again)."""

    def __init__(self, callback, round_):
        self.callback, self.round = callback, round_

    def undo(self):
        self.round["rolled_back"] = True
        if any(self.round["pruned"].values()):
            self.callback.fraction /= 2


class NEPENTHECallback(LinearizationCallback):
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
    3. Otherwise the others get the score s_l = H_l * mean |w| over the
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
    whole sample are taken (the paper's zero).

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

    >>> nepenthe = keras_collapse.NEPENTHECallback(x_train[:2048], (x_val, y_val))
    >>> model.fit(x_train, y_train, epochs=12, callbacks=[nepenthe])
    >>> print(nepenthe.table())
    >>> small = keras_collapse.surgery(model)

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
        **kwargs,
    ):
        if data is None:
            raise ValueError(
                "NEPENTHECallback measures ON/OFF entropy over data: pass "
                "`data=x_sample` (a few thousand training inputs). Received: "
                "data=None"
            )
        if (
            isinstance(prune_fraction, bool)
            or not isinstance(prune_fraction, (int, float, np.integer, np.floating))
            or not 0 < prune_fraction < 1
        ):
            raise ValueError(
                "`prune_fraction` must be a number in (0, 1), the fraction of "
                "the remaining weights pruned per round. Received: "
                f"prune_fraction={prune_fraction!r}"
            )
        if (
            isinstance(zero_entropy, bool)
            or not isinstance(zero_entropy, (int, float))
            or not zero_entropy >= 0
        ):
            raise ValueError(
                "`zero_entropy` must be a number >= 0 (bits). Received: "
                f"zero_entropy={zero_entropy!r}"
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
        if not isinstance(per_layer_logs, bool):
            raise ValueError(
                "`per_layer_logs` must be True or False. Received: "
                f"per_layer_logs={per_layer_logs!r}"
            )
        self.per_layer_logs = per_layer_logs
        if granularity not in ("channels", "weights"):
            raise ValueError(
                "`granularity` must be 'channels' or 'weights'. Received: "
                f"granularity={granularity!r}"
            )
        self.granularity = granularity
        kwargs["ramp_epochs"] = 0
        # A round acts at once: one epoch of recovery, then it is judged.
        kwargs.setdefault("interval", 1)
        self.prune_fraction = float(prune_fraction)
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
                self._targets[entry.activation.name] = _Target.of(
                    entry, self.granularity
                )
        super().on_train_begin(logs)
        self.rounds = []
        self.fraction = self.prune_fraction  # halved by each rolled back round
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
        return self._prune_round(decision, groups, by_name)

    def _groups(self, decision, measured):
        """The groups linearized together: each candidate with a kernel
        alone, or with objective "depth" / "latency" the merge units whose
        members are all measured (and at least one has a kernel)."""
        names = {p.activation.name: p for p in measured}
        if decision.units is None:
            return [[p] for p in measured if p.activation.name in self._targets]
        groups = []
        for unit in decision.units:
            if all(n in names for n in unit.activations) and any(
                n in self._targets for n in unit.activations
            ):
                groups.append([names[n] for n in unit.activations])
        return groups

    def _linearize_round(self, decision, ready, by_name):
        zero = []
        for group in ready:
            if len(zero) + len(group) > decision.room:
                continue
            zero += [(p, self._off(by_name[p.activation.name])) for p in group]
        if not zero:
            return decision.stop("max_layers reached")
        records = self._linearize(zero)
        layers = [pair.activation.name for pair, _ in zero]
        event = self._event_details(by_name, {}, {}, {}, 0, {}, linearized=layers)
        event["channels_off"] = {p.activation.name: int(off.sum()) for p, off in zero}
        return self._round(decision, layers, records, event)

    def _prune_round(self, decision, groups, by_name):
        targets = [p for g in groups for p in g if p.activation.name in self._targets]
        if decision.units is not None:
            targets = self._unit_targets(decision, groups, by_name)
        entropy, scores, remaining = {}, {}, {}
        for pair in targets:
            name = pair.activation.name
            target = self._targets[name]
            entropy[name] = by_name[name].entropy
            if entropy[name] <= self.zero_entropy:
                continue  # waits for the rest of its merge unit
            remaining[name] = target.remaining()
            scores[name] = entropy[name] * target.magnitude()
        share = {n: s for n, s in scores.items() if remaining[n] and s > 0}
        budget = round(self.fraction * sum(remaining[n] for n in share))
        caps = {n: self._targets[n].cap() for n in share}
        counts = allocate_budget(share, caps, budget) if share else {}
        records, pruned = [], {}
        for name in scores:
            done, rec = self._targets[name].prune(
                self.model, counts.get(name, 0), by_name[name], self.zero_entropy
            )
            pruned[name] = done
            records += rec
        if not any(pruned.values()):
            return decision.stop("nothing left to prune or linearize")
        rebuild_train_function(self.model)
        event = self._event_details(
            by_name, scores, remaining, caps, budget, pruned, linearized=[]
        )
        return self._round(decision, [], records, event)

    def _unit_targets(self, decision, groups, by_name):
        """With merge units: the members of the one unit with the lowest
        summed entropy per unit of gain (ties: the larger gain) that still
        has something to prune."""

        def key(group):
            names = tuple(p.activation.name for p in group)
            unit = next(
                (u for u in decision.units if tuple(u.activations) == names), None
            )
            gain = unit.gain(self.objective) if unit is not None else 1.0
            total = sum(by_name[n].entropy for n in names)
            return (total / gain, -gain)

        for group in sorted(groups, key=key):
            open_ = [
                p
                for p in group
                if p.activation.name in self._targets
                and by_name[p.activation.name].entropy > self.zero_entropy
                and self._targets[p.activation.name].remaining()
            ]
            if open_:
                return open_
        return []

    def _event_details(
        self, by_name, scores, remaining, caps, budget, pruned, linearized
    ):
        return {
            "linearized": linearized,
            "entropy": {n: by_name[n].entropy for n in by_name},
            "score": scores,
            "remaining": remaining,
            "prune_fraction": self.fraction,
            "budget": budget,
            "caps": caps,
            "pruned": pruned,
            "where": {n: self._targets[n].where for n in pruned},
            "kernels": {a: k.name for a, k in self._kernels.items()},
            "sparsity": {a: t.pruned() for a, t in self._targets.items()},
            "overall_sparsity": self._overall(),
        }

    def _round(self, decision, layers, records, event):
        round_ = {"epoch": decision.epoch + 1, "rolled_back": False, **event}
        self.rounds.append(round_)
        # On a rollback the round is marked and the fraction halved.
        records.insert(0, _RoundUndo(self, round_))
        return Change(
            layers=layers,
            records=records,
            action="pruned" if not layers else "linearized",
            details=event,
            message=self._describe_round(decision.epoch, layers, event),
        )

    def _describe_round(self, epoch, layers, event):
        if layers:
            off = sum(event.get("channels_off", {}).values())
            return (
                f"Epoch {epoch + 1}: {self.method} linearized {', '.join(layers)} "
                f"(entropy at most {self.zero_entropy:g} bits; {off} OFF channels "
                "zeroed)."
            )
        pruned = event["pruned"]
        parts = []
        for name, count in pruned.items():
            if count:
                unit = "channels" if event["where"][name] == "channels" else "weights"
                parts.append(f"{count} {unit} of {self._targets[name].label}")
        return (
            f"Epoch {epoch + 1}: {self.method} pruned {'; '.join(parts)}; "
            f"sparsity {event['overall_sparsity']:.1%}."
        )

    def _overall(self):
        """Masked kernel weights (a channel pruned at its BatchNormalization
        counts its whole kernel column) over all candidate kernels."""
        targets = getattr(self, "_targets", {})
        size = sum(t.size for t in targets.values())
        return (
            sum(t.pruned() * t.size for t in targets.values()) / size if size else 0.0
        )

    def _off(self, stats):
        """The channels zeroed when a layer is linearized: OFF with TLC's
        confidence on the sample (ON at most `1 - CONFIDENCE` of the time)."""
        return np.asarray(stats.p_on) <= 1.0 - CONFIDENCE

    def _linearize(self, zero):
        """Linearizes the pairs, their OFF channels zeroed (at the BN, else
        in the kernel and bias feeding them)."""
        records = []
        for pair, off in zero:
            if pair.batchnorm is None and off.any():
                records += _zero_columns(self._kernels[pair.activation.name], off)
        records += linearize_pairs(
            self.model, [p for p, _ in zero], [o for _, o in zero]
        )
        rebuild_train_function(self.model)
        return records

    # ---------------------------------------------------------------- seeing
    def history(self):
        """Entropy and sparsity per activation over the rounds.

        Returns:
            dict with "epoch" (list, one per round), "rolled_back" (list of
            bool: undone, by the pre-check or the guard), "refused" (list of
            bool: undone at once by the pre-check), "entropy" and
            "sparsity" ({activation: [value per round]}, None where not
            measured: a linearized layer).
        """
        names = list(self._kernels) if hasattr(self, "_kernels") else []
        rounds = getattr(self, "rounds", [])
        # A decision's refused tries come first among its rounds, one
        # "refused" event each.
        left = {}
        for event in getattr(self, "events", []):
            if event["action"] == "refused":
                left[event["epoch"]] = left.get(event["epoch"], 0) + 1
        refused = []
        for r in rounds:
            refused.append(r["rolled_back"] and left.get(r["epoch"], 0) > 0)
            if refused[-1]:
                left[r["epoch"]] -= 1
        return {
            "epoch": [r["epoch"] for r in rounds],
            "rolled_back": [r["rolled_back"] for r in rounds],
            "refused": refused,
            "entropy": {n: [r["entropy"].get(n) for r in self.rounds] for n in names},
            "sparsity": {n: [r["sparsity"].get(n) for r in self.rounds] for n in names},
        }

    def table(self):
        """The history as text: per activation, "entropy / sparsity" at
        each round (after the round's pruning)."""
        from keras_collapse.report.channel_states import format_rounds

        h = self.history()
        notes = [
            "refused at once" if no else "rolled back" if back else ""
            for back, no in zip(h["rolled_back"], h["refused"])
        ]
        for i, r in enumerate(getattr(self, "rounds", [])):
            if r["linearized"]:
                lin = "linearized " + ", ".join(r["linearized"])
                notes[i] = f"{lin}; {notes[i]}" if notes[i] else lin
        return format_rounds(
            "NEPENTHE rounds: entropy (bits) / kernel sparsity per activation",
            h["epoch"],
            {"entropy": h["entropy"], "sparsity": h["sparsity"]},
            notes,
        )

    def plot(self):
        """Entropy and sparsity per activation over the rounds, as a
        matplotlib `Figure` (needs matplotlib)."""
        from keras_collapse.report.channel_states import plot_rounds

        h = self.history()
        return plot_rounds(
            "NEPENTHE: entropy and sparsity per activation",
            h["epoch"],
            {"entropy (bits)": h["entropy"], "kernel sparsity": h["sparsity"]},
            what="NEPENTHE's rounds",
        )
