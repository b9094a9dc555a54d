"""Per-activation channel states as a table and as a matplotlib figure: one
home for `BatchNormAnalysis` and `ActivationStatistics` (any
`scores.layer_analysis.LayerAnalysis`)."""

from keras_collapse.report.table import _table


def format_channel_states(analysis):
    """One row per collapsible activation: where its statistics come from,
    the channel count, the fraction of channels in each state, the score,
    and whether it is linearized.

    Args:
        analysis: a `LayerAnalysis` (`analyze_batchnorm`,
            `activation_statistics`, ...).

    Returns:
        str. Layers without statistics show why in the last column.
    """
    states = analysis.states
    rows = []
    for s in analysis:
        if s.analysed:
            cells = (
                f"{s.channels}",
                *(f"{s.fraction(state):.0%}" for state in states),
                f"{s.score:.3f}",
            )
        else:
            cells = ("-",) * (2 + len(states))
        rows.append(
            (
                s.name,
                s.activation,
                s.source or "-",
                *cells,
                "yes" if s.linearized else "no",
                s.reason or "",
            )
        )
    header = (
        "Activation",
        "Kind",
        analysis.source_name,
        "Channels",
        *states,
        analysis.score_name.split(" (")[0].capitalize(),
        "Linearized",
        "Note",
    )
    align = "<<<>" + ">" * len(states) + "><" + "<"
    return _table(analysis.heading(), header, rows, align[: len(header)])


def plot_channel_states(analysis, ax=None):
    """Stacked bars of the channel-state fractions per activation, the score
    as a line on a second axis; linearized layers are hatched.

    Returns:
        the matplotlib `Figure`.

    Raises:
        ImportError: if matplotlib is not installed, saying how to get it.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            f"Plotting the {analysis.title} needs matplotlib. Install it with "
            '`pip install "keras-collapse[plot]"` (or `pip install matplotlib`).'
        ) from None
    layers = list(analysis)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(layers) + 2), 4.0))
    else:
        fig = ax.figure
    x = list(range(len(layers)))
    bottom = [0.0] * len(layers)
    for state, color in zip(analysis.states, ("#4c9a2a", "#c9c9c9", "#2b4c7e")):
        heights = [s.fraction(state) if s.analysed else 0.0 for s in layers]
        ax.bar(x, heights, bottom=bottom, color=color, label=state, edgecolor="white")
        bottom = [b + h for b, h in zip(bottom, heights)]
    for i, s in enumerate(layers):
        if s.linearized:
            ax.bar(i, 1.0, fill=False, hatch="//", edgecolor="black", linewidth=0)
        if not s.analysed:
            ax.text(i, 0.5, "n/a", ha="center", va="center", rotation=90, fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels([s.name for s in layers], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of channels")
    score_ax = ax.twinx()
    score_ax.plot(
        x,
        [s.score if s.analysed else float("nan") for s in layers],
        "o-",
        color="#b5332e",
        label=analysis.score_name.split(" (")[0],
    )
    score_ax.set_ylabel(analysis.score_name)
    score_ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = score_ax.get_legend_handles_labels()
    ax.legend(
        handles + more_handles, labels + more_labels, fontsize=7, loc="upper left"
    )
    ax.set_title(f"{analysis.title} per activation (hatched: linearized)")
    fig.tight_layout()
    return fig
