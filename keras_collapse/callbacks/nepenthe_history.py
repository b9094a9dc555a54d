"""NEPENTHE's rounds seen: entropy and sparsity per activation over the
rounds, as data, text or a figure."""


class RoundHistory:
    """`history()`, `table()` and `plot()` of `NEPENTHECallback`."""

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
