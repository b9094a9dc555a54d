"""NEPENTHECallback: entropy-guided unstructured pruning that drives layers to
zero entropy, then linearizes them, on the shared decision engine."""

import math

import keras
import numpy as np

from keras_collapse.callbacks.change import Change
from keras_collapse.callbacks.engine import LinearizationCallback
from keras_collapse.linearize import linearize_pairs
from keras_collapse.linearize import rebuild_train_function
from keras_collapse.masks import held_mask
from keras_collapse.masks import hold_at_zero
from keras_collapse.prune import allocate_budget
from keras_collapse.prune import prunable_layers
from keras_collapse.prune import prune_by_count
from keras_collapse.prune import sparsity
from keras_collapse.scores.scorers import EntropyScorer

_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
# The most of what a layer has left that one round may prune: uncapped, the
# softmax gave the lowest-score layer its whole kernel in the first round of
# a 6-epoch fine-tune (training accuracy 0.099 until the rollback).
LAYER_CAP = 0.5


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
    """NEPENTHE: prunes single weights during `fit`, most where the ON/OFF
    entropy is lowest, until layers reach entropy 0 and are linearized.

    The candidates are the collapsible activations fed by a Conv/Dense/
    DepthwiseConv kernel (`prunable_layers`). At each decision (after
    `warmup_epochs`, then every `interval` epochs):

    1. The ON/OFF entropy H_l of every candidate is measured on a fixed
       sample of `data` (`activation_statistics`, inference mode).
    2. Every candidate whose entropy is at most `zero_entropy` is linearized
       (always-ON channels pass; always-OFF channels are zeroed at their
       BatchNormalization, or, without one, in the kernel and bias feeding
       them) and leaves the candidate set.
    3. The others get the score s_l = H_l * mean |w| over the kernel weights
       they have left; `round(prune_fraction * remaining)` of all their
       remaining weights are pruned (`prune_by_count`, smallest |w| first,
       held at zero by a mask while training goes on), shared by
       `allocate_budget`: softmax(S / s_l), S = sum of the scores, each
       share capped at `LAYER_CAP` (half) of what a layer has left, so that
       no round masks a whole kernel. A layer with nothing left (or only
       exact zeros) is left out of the share.

    The round is judged at the next decision like any change of the engine
    (the guard): a round that costs too much is undone, weights and masks,
    the layers it linearized are kept nonlinear (`kept`) and leave the
    candidate set, and the next rounds prune half the fraction (the same
    round again would fail again); `patience` rollbacks in a row stop it.
    Follow with `keras_collapse.surgery`: the linearized layers are merged,
    the masks dropped.

    Logs each epoch `nepenthe_sparsity` (all candidate kernels),
    `nepenthe_sparsity_<layer>` per kernel layer, `nepenthe_entropy_<act>`
    per activation (the last measurement; NaN before the first),
    `nepenthe_prune_fraction` (the fraction of the next round),
    `nepenthe_linearized` and `nepenthe_rollbacks`. `events` holds one
    "pruned" entry per round (entropy, score, remaining, pruned, sparsity
    per activation); `history()`, `table()` and `plot()` show entropy and
    sparsity per layer over the rounds.

    Args:
        data: the inputs (arrays `x` or `(x, y)`, labels ignored; tf.data,
            PyDataset, DataLoader or any iterable of batches).
        validation_data: labelled `(x, y)` data for the guard, or None.
            Defaults to `None`.
        prune_fraction: float in (0, 1), the fraction of the remaining
            candidate weights pruned per round. Defaults to `0.5`.
        samples: int, the rows of the fixed samples. Defaults to `1024`.
        zero_entropy: float, the entropy (bits) at or below which a layer is
            linear on the sample and linearized. Defaults to `1e-6`.
        **kwargs: the engine's arguments (see `LinearizationCallback`):
            `warmup_epochs` (1), `interval` (2), `monitor`, `tolerance`,
            `patience` (3), `max_layers` (the most activations linearized),
            `candidates`, `recalibrate`, `batch_size`, `seed`, `verbose`,
            `objective` ("depth" / "latency": only the members of merge
            units are pruned and linearized), `exact`, `cost_model`.
            A round acts at once (`ramp_epochs` is 0); its pace is
            `prune_fraction` (`per_decision` stays 1).

    Raises:
        ValueError: for bad arguments; at `on_train_begin` (before any
            change), if no collapsible activation has a kernel to prune.

    Example:

    >>> nepenthe = keras_collapse.NEPENTHECallback(x_train[:2048])
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
        zero_entropy=1e-6,
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
                "`zero_entropy` must be a number >= 0. Received: "
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
        kwargs["ramp_epochs"] = 0
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
        for entry in prunable_layers(self.model):
            if entry.layer is not None:
                self._kernels[entry.activation.name] = entry.layer
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
        state = sparsity(self.model)
        names = {layer.name for layer in self._kernels.values()}
        masked = sum(state.masked[n] for n in names)
        size = sum(state.sizes[n] for n in names)
        logs[f"{prefix}_sparsity"] = masked / size if size else 0.0
        logs[f"{prefix}_prune_fraction"] = self.fraction
        for act, layer in self._kernels.items():
            logs[f"{prefix}_sparsity_{layer.name}"] = state.layers[layer.name]
            logs[f"{prefix}_entropy_{act}"] = float(self._entropy.get(act, math.nan))

    # ------------------------------------------------------------ one round
    def make_change(self, decision):
        """One NEPENTHE round: linearize the candidates at zero entropy,
        prune the others by entropy-weighted magnitude (see the class)."""
        pool = [p for p in decision.pool if p.activation.name in self._kernels]
        if not pool:
            return decision.stop("no candidate left")
        stats = decision.context.statistics(pool)
        by_name = {s.name: s for s in stats}
        zero, scored = [], []
        for pair in pool:
            s = by_name[pair.activation.name]
            if not math.isfinite(s.entropy):
                decision.context.skip(s.name, "non-finite statistics")
                continue
            self._entropy[s.name] = s.entropy
            if s.entropy <= self.zero_entropy:
                if len(zero) < decision.room:
                    zero.append((pair, s.never_on))
            else:
                scored.append(pair)
        records = self._linearize(zero)
        entropy, scores, remaining, kernels = {}, {}, {}, {}
        for pair in scored:
            name = pair.activation.name
            layer = self._kernels[name]
            free = ~held_mask(layer, "kernel")
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            entropy[name] = by_name[name].entropy
            remaining[name] = int(free.sum())
            kernels[name] = layer.name
            magnitude = float(np.mean(np.abs(kernel[free]))) if free.any() else 0.0
            scores[name] = entropy[name] * magnitude
        share = {n: s for n, s in scores.items() if remaining[n] and s > 0}
        budget = round(self.fraction * sum(remaining[n] for n in share))
        caps = {n: math.ceil(LAYER_CAP * remaining[n]) for n in share}
        counts = allocate_budget(share, caps, budget) if share else {}
        pruned = {n: counts.get(n, 0) for n in scores}
        records += prune_by_count(
            self.model, {kernels[n]: c for n, c in pruned.items() if c}
        )
        if not zero and not any(pruned.values()):
            return decision.stop("nothing left to prune or linearize")
        layers = [pair.activation.name for pair, _ in zero]
        state = sparsity(self.model)
        event = {
            "linearized": layers,
            "entropy": {n: by_name[n].entropy for n in by_name},
            "score": scores,
            "remaining": remaining,
            "prune_fraction": self.fraction,
            "budget": budget,
            "caps": caps,
            "pruned": pruned,
            "kernels": {a: k.name for a, k in self._kernels.items()},
            "sparsity": {a: state.layers[k.name] for a, k in self._kernels.items()},
            "overall_sparsity": self._overall(state),
        }
        round_ = {"epoch": decision.epoch + 1, "rolled_back": False, **event}
        self.rounds.append(round_)
        # On a rollback the round is marked and the fraction halved.
        records.insert(0, _RoundUndo(self, round_))
        return Change(
            layers=layers,
            records=records,
            action="pruned",
            details=event,
            message=self._describe_round(decision.epoch, layers, event),
        )

    def _describe_round(self, epoch, layers, event):
        linearized = f"linearized {', '.join(layers)}; " if layers else ""
        pruned = event["pruned"].values()
        return (
            f"Epoch {epoch + 1}: {self.method} {linearized}pruned {sum(pruned)} "
            f"weights in {sum(1 for n in pruned if n)} layer(s); sparsity "
            f"{event['overall_sparsity']:.1%}."
        )

    def _overall(self, state):
        names = {layer.name for layer in self._kernels.values()}
        size = sum(state.sizes[n] for n in names)
        return sum(state.masked[n] for n in names) / size if size else 0.0

    def _linearize(self, zero):
        """Linearizes the zero-entropy pairs, their never-ON channels zeroed
        (at the BN, else in the kernel and bias feeding them)."""
        if not zero:
            return []
        pairs = [pair for pair, _ in zero]
        records = []
        for pair, off in zero:
            if pair.batchnorm is None and off.any():
                records += self._zero_channels(self._kernels[pair.activation.name], off)
        records += linearize_pairs(self.model, pairs, [off for _, off in zero])
        rebuild_train_function(self.model)
        return records

    def _zero_channels(self, layer, off):
        # Values come back from the engine's snapshot on rollback.
        if isinstance(layer, _DEPTHWISE) or layer.kernel.shape[-1] != len(off):
            return []  # output channels not along the kernel's last axis
        kernel = np.broadcast_to(off, tuple(layer.kernel.shape))
        records = [hold_at_zero(layer, "kernel", kernel)]
        if getattr(layer, "use_bias", False) and layer.bias is not None:
            records.append(hold_at_zero(layer, "bias", off))
        return records

    # ---------------------------------------------------------------- seeing
    def history(self):
        """Entropy and sparsity per activation over the rounds.

        Returns:
            dict with "epoch" (list, one per round), "rolled_back" (list of
            bool), "entropy" and "sparsity" ({activation: [value per
            round]}, None where not measured: a linearized layer).
        """
        names = list(self._kernels) if hasattr(self, "_kernels") else []
        return {
            "epoch": [r["epoch"] for r in getattr(self, "rounds", [])],
            "rolled_back": [r["rolled_back"] for r in getattr(self, "rounds", [])],
            "entropy": {n: [r["entropy"].get(n) for r in self.rounds] for n in names},
            "sparsity": {n: [r["sparsity"].get(n) for r in self.rounds] for n in names},
        }

    def table(self):
        """The history as text: per activation, "entropy / sparsity" at
        each round (after the round's pruning)."""
        from keras_collapse.report.channel_states import format_rounds

        h = self.history()
        notes = ["rolled back" if back else "" for back in h["rolled_back"]]
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
