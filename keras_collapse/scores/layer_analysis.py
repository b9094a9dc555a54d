"""What the per-layer analyses share: indexing, the table and the figure.

`BatchNormAnalysis` (TLC's Gaussian ON/OFF model) and `ActivationStatistics`
(ON/OFF states measured over data) are both one record per collapsible
activation with three channel states and a score; they are printed and drawn
by the same code (`keras_collapse.report.channel_states`).
"""

from keras_collapse.checks import check_choice


class LayerAnalysis:
    """A per-activation analysis; index it by position or by activation name,
    iterate over it, `print()` it for a table, `plot()` it.

    Subclasses set `layers` (records with `name`, `activation`, `source`,
    `channels`, `fraction(state)`, `score`, `analysed`, `linearized`,
    `reason`) and the class attributes below, which label the table and the
    figure.
    """

    title = "Per-activation analysis"  # also names the figure
    states = ("ON", "uncertain", "OFF")  # the channel states, ON first
    score_name = "score"
    source_name = "Source"

    def __init__(self, layers):
        self.layers = list(layers)

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, key):
        if isinstance(key, str):
            for record in self.layers:
                if record.name == key:
                    return record
            raise KeyError(
                f"No collapsible activation named {key!r}. Available: "
                f"{[r.name for r in self.layers]}"
            )
        return self.layers[key]

    def heading(self):
        """The table's first line."""
        return f"{self.title} ({len(self)} activations)"

    def table(self):
        from keras_collapse.report.channel_states import format_channel_states

        return format_channel_states(self)

    def __str__(self):
        return self.table()

    def plot(self, ax=None):
        """Draws the channel-state fractions and the score per layer.

        Needs matplotlib (`pip install "keras-collapse[plot]"`).

        Args:
            ax: a matplotlib `Axes` to draw into, or None for a new figure.

        Returns:
            the matplotlib `Figure`.
        """
        from keras_collapse.report.channel_states import plot_channel_states

        return plot_channel_states(self, ax=ax)


def check_state(state, states):
    return check_choice("state", state, states)
