"""One decision's change, as the engine keeps it until it is judged."""

import dataclasses


@dataclasses.dataclass
class Change:
    """What a method did at one decision, and how to take it back.

    A method's `make_change` returns one; the engine keeps it until the next
    decision judges it (and rolls the weights back to the snapshot taken
    before it, undoing `records`, if the monitored value fell too far).

    Attributes:
        layers: list of the activation names it linearized.
        records: list of objects with `undo()`, undone in reverse order on a
            rollback (masks, constraints, locks, a method's own state).
        ramp: a `Ramp` easing the change in, whose records are undone too,
            or None.
        retry: bool, whether a rollback returns `layers` to the candidates
            (a group taken at a fractional pace) instead of keeping them
            nonlinear for good. A refusal by the pre-check always returns
            them (tried again at the next decision).
        action: str, the event's name ("linearized", "pruned", ...).
        details: dict, the event's details (`events` carries them).
        message: str or None, the method's own verbose line for it (the
            engine formats only its own events).
        preview: callable or None: for a change eased in over time (a
            `ramp`), applies its final state at once and returns the records
            that undo it, so the pre-check measures what the change will be;
            None when the change is made in full already.
        epoch: int, the 0-based epoch it was made at (set by the engine).
        reference: float or None, the monitored value then (set by the
            engine).
        snapshot: the weights before it (set by the engine).
    """

    layers: list
    records: list = dataclasses.field(default_factory=list)
    ramp: object = None
    retry: bool = False
    action: str = "linearized"
    details: dict = dataclasses.field(default_factory=dict)
    message: str | None = None
    preview: object = dataclasses.field(default=None, repr=False)
    epoch: int | None = None
    reference: float | None = None
    snapshot: list | None = dataclasses.field(default=None, repr=False)

    def undo_records(self):
        """Every undo record, the ramp's included, in the order to undo."""
        records = list(self.records)
        if self.ramp is not None:
            records += self.ramp.records or []
        return list(reversed(records))
