"""Per-activation channel states as a table and as a matplotlib figure: one
home for `BatchNormAnalysis` and `ActivationStatistics` (any
`scores.layer_analysis.LayerAnalysis`), and for per-layer quantities over a
callback's rounds (`format_rounds`, `plot_rounds`: NEPENTHE's entropy and
sparsity)."""

import math

from keras_collapse.report.table import titled_table


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
    return titled_table(analysis.heading(), header, rows, align[: len(header)])


def plot_channel_states(analysis, ax=None):
    """Stacked bars of the channel-state fractions per activation, the score
    as a line on a second axis; linearized layers are hatched.

    Returns:
        the matplotlib `Figure`.

    Raises:
        ImportError: if matplotlib is not installed, saying how to get it.
    """
    plt = _pyplot(f"the {analysis.title}")
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
    # Above the axes, in one row: inside, it would cover the first bars
    # (the right side holds the score's axis).
    ax.legend(
        handles + more_handles,
        labels + more_labels,
        fontsize=7,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.01),
        ncol=len(handles) + len(more_handles),
        frameon=False,
        borderaxespad=0.0,
    )
    ax.set_title(f"{analysis.title} per activation (hatched: linearized)", pad=20)
    fig.tight_layout()
    return fig


def _pyplot(what):
    """`matplotlib.pyplot`, imported when a figure is asked for."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            f"Plotting {what} needs matplotlib. Install it with "
            '`pip install "keras-collapse[plot]"` (or `pip install matplotlib`).'
        ) from None
    return plt


def format_rounds(title, epochs, series, notes=None):
    """Per-layer values over rounds: one row per layer, one column per round.

    Args:
        title: str, the first line.
        epochs: list of the rounds' epochs (column headings "epoch N").
        series: dict quantity -> {layer: [value per round]} (None where the
            layer was not measured); a cell shows every quantity, "/"-joined,
            e.g. "0.412 / 37%": fractions named "*sparsity*" in percent.
        notes: list of str per round to show under the table, or None.

    Returns:
        str.
    """
    quantities = list(series)
    layers = list(dict.fromkeys(n for q in quantities for n in series[q]))

    def cell(quantity, value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.0%}" if "sparsity" in quantity else f"{value:.3f}"

    rows = [
        (
            name,
            *(
                " / ".join(
                    cell(q, (series[q].get(name) or [None] * len(epochs))[i])
                    for q in quantities
                )
                for i in range(len(epochs))
            ),
        )
        for name in layers
    ]
    header = (" / ".join(quantities), *(f"epoch {e}" for e in epochs))
    table = titled_table(title, header, rows, "<" + ">" * len(epochs))
    extra = [f"epoch {e}: {n}" for e, n in zip(epochs, notes or []) if n]
    return "\n".join([table, *extra])


def plot_rounds(title, epochs, series, what="the rounds"):
    """One panel per quantity, one line per layer over the rounds' epochs.

    Args:
        title: str, the figure's title.
        epochs: list of the rounds' epochs (the x axis).
        series: dict quantity -> {layer: [value per round or None]}.
        what: str, named in the error without matplotlib.

    Returns:
        the matplotlib `Figure`.

    Raises:
        ImportError: if matplotlib is not installed, saying how to get it.
    """
    plt = _pyplot(what)
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(
        1, len(series), figsize=(5.0 * len(series), 3.6), squeeze=False
    )
    for ax, (quantity, lines) in zip(axes[0], series.items()):
        for name, values in lines.items():
            ys = [float("nan") if v is None else v for v in values]
            ax.plot(epochs, ys, "o-", label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
        ax.set_ylabel(quantity)
        ax.set_ylim(bottom=0)
    # Every panel's layers, right of the last panel, outside it: inside, it
    # would cover the lines.
    named = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            named.setdefault(label, handle)
    axes[0][-1].legend(
        list(named.values()),
        list(named),
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
    )
    fig.suptitle(title)
    fig.tight_layout()
    return fig
