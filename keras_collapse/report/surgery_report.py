"""What a surgery did, in numbers and in words."""

import dataclasses

from keras_collapse.report.latency import measure_latency
from keras_collapse.report.table import format_entries
from keras_collapse.report.table import format_latency
from keras_collapse.report.table import format_stats_table


def count_entries(entries, kind):
    """How many of `entries` (`Entry`s of a surgery's journal) are of `kind`."""
    return sum(entry.kind == kind for entry in entries)


@dataclasses.dataclass
class SurgeryReport:
    """Before/after statistics and the record of a `surgery`.

    Attributes:
        before, after: `ModelStats` (depth, activations, params, MACs, layers).
        done: list of `Entry(kind, layers, detail)`: folds, merges, cuts.
        skipped: list of `Entry`: what was not done, and why.
        exact: bool, whether only everywhere-exact merges were allowed.
        deviation: float or None, measured `max|a - b| / max|a|`, the worst
            over the eager and compiled paths (None if not verified).
        tolerance: float, the tolerance `deviation` was checked against
            (raised for a mixed-precision model: see `verification`).
        verification: `Verification` or None: per-path deviations, which
            inputs, and the precision the check was judged at.
        latency: dict or None, filled by `measure_latency()`.
    """

    before: object
    after: object
    done: list
    skipped: list
    exact: bool
    deviation: float | None
    tolerance: float
    models: tuple = dataclasses.field(repr=False, default=())
    latency: dict | None = None
    verification: object = None

    def count(self, kind):
        """Number of actions of a kind ("fold_bn", "merge", "cut_channels", ...)."""
        return count_entries(self.done, kind)

    def measure_latency(self, batch_sizes=(1, 64), repeats=20, input_shape=None):
        """Times the input model and the result, interleaved, and stores and
        returns the result (`speedup` is input time / result time)."""
        original, collapsed = self.models
        self.latency = measure_latency(
            {"input model": original, "collapsed": collapsed},
            batch_sizes=batch_sizes,
            repeats=repeats,
            input_shape=input_shape,
        )
        return self.latency

    def as_dict(self):
        return {
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "done": [dataclasses.asdict(e) for e in self.done],
            "skipped": [dataclasses.asdict(e) for e in self.skipped],
            "exact": self.exact,
            "deviation": self.deviation,
            "tolerance": self.tolerance,
            "verification": (
                self.verification.as_dict() if self.verification else None
            ),
            "latency": self.latency,
        }

    def summary(self):
        mode = "exact" if self.exact else "inexact (border merges allowed)"
        if self.deviation is None:
            check = "not verified"
        elif self.verification is not None:
            check = self.verification.describe()
        else:
            check = (
                f"max relative deviation {self.deviation:.2e} "
                f"(tolerance {self.tolerance:g})"
            )
        parts = [
            f"Surgery ({mode}): {check}",
            format_stats_table(self.before, self.after),
            format_entries(self.done, "Done"),
            format_entries(self.skipped, "Not done"),
        ]
        if self.latency:
            parts.append(format_latency(self.latency))
        return "\n\n".join(parts)

    def __str__(self):
        return self.summary()
