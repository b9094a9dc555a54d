"""What `collapse` did: the target, what was linearized, the model before
and after, and the validation metrics and latency of both."""

import dataclasses

from keras_collapse.report.table import format_latency
from keras_collapse.report.table import format_stats_table
from keras_collapse.report.table import titled_table


@dataclasses.dataclass
class CollapseReport:
    """The record of a `keras_collapse.collapse` call.

    Attributes:
        objective: str, "activations", "depth" or "latency".
        target: float, the fraction asked for.
        linearized: list of the activation names made linear.
        candidates: int, the activations the method chose among.
        before, after: `ModelStats` of the input model and of the result
            (depth, activations, params, MACs, layers).
        metrics_before, metrics_after: dict of the validation metrics of the
            input model and of the result (empty without `validation_data`).
        latency: dict from `measure_latency` (input model vs result), or
            None.
        surgery: the `SurgeryReport` of the final surgery.
        events: list of the method's events.
        epochs: int, the fine-tuning epochs.
        teacher: str, what taught the result ("none", "auto", a model name).
    """

    objective: str
    target: float
    linearized: list
    candidates: int
    before: object
    after: object
    metrics_before: dict
    metrics_after: dict
    latency: dict | None
    surgery: object
    events: list
    epochs: int
    teacher: str = "none"

    def as_dict(self):
        """The report as plain Python values (JSON-ready)."""
        return {
            "objective": self.objective,
            "target": self.target,
            "linearized": list(self.linearized),
            "candidates": self.candidates,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "metrics_before": dict(self.metrics_before),
            "metrics_after": dict(self.metrics_after),
            "latency": self.latency,
            "epochs": self.epochs,
            "teacher": self.teacher,
            "surgery": self.surgery.as_dict() if self.surgery else None,
        }

    def summary(self):
        head = (
            f"Collapse ({self.objective}, target {self.target:g}, {self.epochs} "
            f"epoch(s), teacher: {self.teacher}): {len(self.linearized)} of "
            f"{self.candidates} activations linearized"
        )
        parts = [format_stats_table(self.before, self.after, title=head)]
        rows = [
            (
                name,
                f"{a:.4f}",
                f"{self.metrics_after[name]:.4f}",
                f"{self.metrics_after[name] - a:+.4f}",
            )
            for name, a in self.metrics_before.items()
            if name in self.metrics_after
        ]
        if rows:
            header = ("Validation", "Input model", "Result", "Change")
            parts.append(titled_table("Validation metrics", header, rows, "<>>>"))
        if self.linearized:
            parts.append("Linearized: " + ", ".join(self.linearized))
        if self.latency:
            parts.append(format_latency(self.latency))
        return "\n\n".join(parts)

    def __str__(self):
        return self.summary()
