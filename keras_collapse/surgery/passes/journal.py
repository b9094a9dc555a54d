"""The record of what the passes did, and of what they chose not to do."""

import dataclasses

from keras_collapse.report.surgery_report import count_entries


@dataclasses.dataclass
class Entry:
    kind: str  # e.g. "fold_bn", "merge", "remove_identity", "cut_channels"
    layers: tuple  # names of the layers involved
    detail: str


class Journal:
    """Collects `done` and `skipped` entries, in the order they happened."""

    def __init__(self):
        self.done = []
        self.skipped = []

    def did(self, kind, layers, detail=""):
        self.done.append(Entry(kind, tuple(layers), detail))

    def skip(self, kind, layers, reason):
        entry = Entry(kind, tuple(layers), reason)
        if entry not in self.skipped:  # passes run in rounds: say it once
            self.skipped.append(entry)

    def count(self, kind):
        """Number of actions of a kind ("fold_bn", "merge", ...)."""
        return count_entries(self.done, kind)
