"""The potential: what the surgery could save if every merge unit were
linearized, before any training, and which activations can never pay.

Read from `merge_units`' answer alone: the union of every unit's activations
is priced by one more dry run of the surgery's passes (`MergeUnits.evaluate`),
against the BN-folded model the dry runs start from (the model as the surgery
leaves it with nothing more linearized: BatchNorm folded, what is already
linear merged). Its depth and latency shares are the largest `target`
`collapse` can reach with `objective="depth"` / `"latency"`.
"""

import dataclasses
import math

from keras_collapse.report.table import titled_table

FIELDS = ("depth", "params", "macs", "latency")
LABELS = {
    "depth": "Depth (weight layers)",
    "params": "Parameters",
    "macs": "MACs per sample",
    "latency": "Latency (cost model)",
}


@dataclasses.dataclass(frozen=True)
class Potential:
    """What linearizing every merge unit would save, before any training.

    Attributes:
        saved: dict, per field ("depth", "params", "macs", "latency"), what
            the surgery's dry run with every unit's activations linear saves.
        total: dict, the same fields of the BN-folded model (what the
            surgery leaves with nothing more linearized): what `saved` is a
            share of.
        units: list of `MergeUnit`, the largest saving first.
        never: dict, activation name -> why linearizing it (alone or in a
            group) lets the surgery merge nothing.
        candidates: list of the activation names considered.
        exact: bool, the surgery mode priced.
        cost_model: str, what priced "latency" (`repr` of the cost model).
    """

    saved: dict
    total: dict
    units: list
    never: dict
    candidates: list
    exact: bool = True
    cost_model: str = "MacCostModel()"

    @classmethod
    def of(cls, found, cost_model=None):
        """The potential of a `merge_units` answer `found` (one dry run more:
        every unit's activations linear together)."""
        members = [n for n in found.candidates if found.unit_of(n) is not None]
        total = found.total
        if members:
            union = found.evaluate(members)
            saved = {field: getattr(union, field) for field in FIELDS}
        else:
            saved = dict.fromkeys(FIELDS, 0)
        saved["latency"] = float(saved["latency"])
        return cls(
            saved=saved,
            total=total,
            units=list(found.units),
            never=dict(found.useless),
            candidates=list(found.candidates),
            exact=found.exact,
            cost_model=repr(cost_model) if cost_model is not None else "MacCostModel()",
        )

    def share(self, field):
        """`saved[field] / total[field]` (0 when the total is 0)."""
        total = self.total[field]
        return self.saved[field] / total if total else 0.0

    @property
    def members(self):
        """The activations in some merge unit, in graph order."""
        inside = {name for unit in self.units for name in unit.activations}
        return [n for n in self.candidates if n in inside]

    def help_for(self, reason):
        """What would let an activation refused for `reason` pay."""
        return help_for(reason, self.exact)

    def as_dict(self):
        """JSON-ready: per field `{"saved", "total", "share"}`, the units
        with their shares, and the activations that never pay."""
        fields = {
            field: {
                "saved": self.saved[field],
                "total": self.total[field],
                "share": self.share(field),
            }
            for field in FIELDS
        }
        return {
            **fields,
            "units": [
                {
                    "activations": list(unit.activations),
                    "layers": unit.layers,
                    **{field: getattr(unit, field) for field in FIELDS},
                    "share": {
                        field: _ratio(getattr(unit, field), self.total[field])
                        for field in FIELDS
                    },
                    "merges": list(unit.merges),
                }
                for unit in self.units
            ],
            "never": {
                name: {"reason": reason, "help": self.help_for(reason)}
                for name, reason in self.never.items()
            },
            "candidates": list(self.candidates),
            "exact": self.exact,
            "cost_model": self.cost_model,
        }

    def summary(self):
        mode = "exact" if self.exact else "inexact (border merges allowed)"
        head = (
            f"Potential: linearizing every merge unit ({len(self.units)} "
            f"unit(s), {len(self.members)} of {len(self.candidates)} "
            f"activations; {mode} surgery, latency priced by {self.cost_model})"
        )
        rows = [
            (
                LABELS[field],
                format_number(self.saved[field]),
                format_number(self.total[field]),
                f"{self.share(field):.1%}",
            )
            for field in FIELDS
        ]
        table = titled_table(head, ("Saves", "Saved", "Of", "Share"), rows, "<>>>")
        if self.units:
            reach = (
                f'The most collapse can reach: objective="depth" target <= '
                f'{_floor(self.share("depth"))}, objective="latency" target <= '
                f"{_floor(self.share('latency'))}."
            )
        else:
            reach = (
                "No merge unit: linearizing saves no depth or latency here "
                '(collapse refuses objective="depth" and "latency"); '
                'objective="activations" still removes activations.'
            )
        parts = [f"{table}\n{reach}"]
        if self.units:
            parts.append(units_table(self.units, self.total))
        if self.never:
            parts.append(self.never_text())
        return "\n\n".join(parts)

    def never_text(self):
        """The activations that never pay, grouped by reason, with what
        would help."""
        by_reason = {}
        for name, reason in self.never.items():
            by_reason.setdefault(reason, []).append(name)
        lines = [f"Never pay ({len(self.never)} activation(s)):"]
        for reason, names in by_reason.items():
            lines.append(f"- {', '.join(names)}: {reason}.")
            lines.append(f"  What would help: {self.help_for(reason)}.")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def units_table(units, total, title=None, layers=False):
    """Merge units, one row each, every saving with its share of `total`
    (a dict of "depth", "params", "macs", "latency"); `layers`: a column
    of the layers each unit removes besides its activations."""
    title = title or f"Merge units ({len(units)}), each as a share of the whole"
    rows = [
        (
            ", ".join(unit.activations),
            *((unit.layers,) if layers else ()),
            *(
                f"{format_number(getattr(unit, field))} "
                f"({_ratio(getattr(unit, field), total[field]):.1%})"
                for field in FIELDS
            ),
        )
        for unit in units
    ]
    header = ("Activations", *(("Layers",) if layers else ()))
    header += ("Depth", "Params", "MACs", "Latency")
    return titled_table(title, header, rows, "<" + ">" * (len(header) - 1))


def help_for(reason, exact=True):
    """What would let an activation pay that the merge pass refused for
    `reason` (its journal's detail)."""
    hints = []
    if "border" in reason and exact:
        hints.append(
            "`exact=False` (`--no-exact`): merges exact only away from the "
            "image border, the deviation measured"
        )
    if "cost more" in reason or "costs more" in reason:
        hints.append(
            "channel pruning first (fewer channels can make the merged layer "
            "the cheaper form), or a cost model that prices layers "
            "(`MacCostModel(layer_overhead=...)`)"
        )
    if "static input size" in reason:
        hints.append("a fixed input size (`input_shape=`, `--input-shape`)")
    hints.append(
        'objective="activations" (the papers\' count: the activation goes, '
        "its layers stay)"
    )
    return "; or ".join(hints)


def _floor(share):
    """`share` rounded down to 3 decimals, as a target."""
    return f"{math.floor(share * 1000 + 1e-9) / 1000:g}"


def _ratio(part, whole):
    return part / whole if whole else 0.0


def format_number(value):
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.4g}"
    return f"{int(value):,}"
