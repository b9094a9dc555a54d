"""One NEPENTHE round: linearize the candidates (or merge units) that
reached zero entropy, else share a pruning budget among the others, more
where the entropy is lower; the round recorded, and undone on a
rollback (the next rounds then prune half as much)."""

import numpy as np

from keras_collapse.actions.linearize import linearize_pairs
from keras_collapse.actions.linearize import rebuild_train_function
from keras_collapse.actions.prune import allocate_budget
from keras_collapse.callbacks.change import Change
from keras_collapse.callbacks.nepenthe_targets import zero_columns

# A channel is OFF (zeroed when its layer is linearized) when it was ON at
# most 1 - CONFIDENCE of the time on the sample: TLC's P(OFF) >= 0.95.
CONFIDENCE = 0.95


class RoundUndo:
    """A rolled-back round: marked in `rounds`; the next prune half as much
    (the same round again would fail again)."""

    def __init__(self, callback, round_):
        self.callback, self.round = callback, round_

    def undo(self):
        self.round["rolled_back"] = True
        if any(self.round["pruned"].values()):
            self.callback.fraction /= 2


class Rounds:
    """The rounds of `NEPENTHECallback` (its `make_change` picks which)."""

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

    def _linearize_round(self, decision, ready, by_name, trial=False):
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
        event["trial"] = trial
        return self._round(decision, layers, records, event)

    def _trial_round(self, decision, groups, by_name):
        """The trial: once per decision, the group with the lowest entropy
        (per unit of gain) linearized for the pre-check to judge; None when
        off, without a pre-check, or tried at this decision already (the
        pre-check refused it: the round prunes instead)."""
        if not self.trial or self._precheck is None:
            return None
        if self._tried_at is decision.context:
            return None
        self._tried_at = decision.context
        fits = [g for g in groups if len(g) <= decision.room]
        if not fits:
            return None
        lowest = min(fits, key=self._group_key(decision, by_name))
        return self._linearize_round(decision, [lowest], by_name, trial=True)

    def _group_key(self, decision, by_name):
        """Sort key of a group: summed entropy per unit of gain (ties: the
        larger gain); a lone candidate's gain is 1."""

        def key(group):
            names = tuple(p.activation.name for p in group)
            unit = None
            if decision.units is not None:
                unit = next(
                    (u for u in decision.units if tuple(u.activations) == names),
                    None,
                )
            gain = unit.gain(self.objective) if unit is not None else 1.0
            total = sum(by_name[n].entropy for n in names)
            return (total / gain, -gain)

        return key

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

        for group in sorted(groups, key=self._group_key(decision, by_name)):
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
        records.insert(0, RoundUndo(self, round_))
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
            if event.get("trial"):
                bits = ", ".join(f"{event['entropy'][n]:.3f}" for n in layers)
                why = f"the lowest entropy, {bits} bits: a trial"
            else:
                why = f"entropy at most {self.zero_entropy:g} bits"
            return (
                f"Epoch {epoch + 1}: {self.method} linearized {', '.join(layers)} "
                f"({why}; {off} OFF channels zeroed)."
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
                records += zero_columns(self._kernels[pair.activation.name], off)
        records += linearize_pairs(
            self.model, [p for p, _ in zero], [o for _, o in zero]
        )
        rebuild_train_function(self.model)
        return records
