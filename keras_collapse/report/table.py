"""Plain-text tables of model statistics, surgery entries and latencies.

Pure functions returning `str`, laid out like `model.summary()`: a title, a
header, a rule, then rows, with column widths computed from the contents.
"""

import math

from keras_collapse.checks import shown
from keras_collapse.report.stats import ModelStats

STAT_ROWS = (
    ("Depth (weight layers)", "depth"),
    ("Activations", "activations"),
    ("Linearized activations", "linearized"),
    ("Parameters", "params"),
    ("MACs per sample", "macs"),
    ("Layers", "layers"),
)


def format_stats_table(before, after, title="Model statistics"):
    """Compares two `ModelStats`, row by row.

    Args:
        before: ModelStats. The model before surgery.
        after: ModelStats. The model after surgery.
        title: str. First line of the table. Defaults to "Model statistics".

    Returns:
        str. One row per statistic: before, after, and the change in percent,
        followed by the notes of either model, if any.

    Raises:
        ValueError: if `before` or `after` is not a ModelStats.

    Example:

    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(8, activation="relu")(inputs)
    >>> deep = keras.Model(inputs, keras.layers.Dense(2)(x))
    >>> shallow = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    >>> before, after = kc.model_stats(deep), kc.model_stats(shallow)
    >>> print(kc.report.format_stats_table(before, after))
    Model statistics
    ...
    Depth (weight layers)   2   1   -50.0%
    ...
    """
    for name, stats in (("before", before), ("after", after)):
        if not isinstance(stats, ModelStats):
            raise ValueError(
                f"`{name}` must be a ModelStats (from `model_stats`). Received: "
                f"{name}={shown(stats)} of type {type(stats).__name__}"
            )
    rows = [
        (
            label,
            f"{getattr(before, field):,}",
            f"{getattr(after, field):,}",
            _change(getattr(before, field), getattr(after, field)),
        )
        for label, field in STAT_ROWS
    ]
    table = titled_table(title, ("", "Before", "After", "Change"), rows, "<>>>")
    # A note both models share (an input size assumed) is said once.
    notes = [
        f"Note: {n}" if n in after.notes else f"Note (before): {n}"
        for n in before.notes
    ] + [f"Note (after): {n}" for n in after.notes if n not in before.notes]
    return "\n".join([table, *notes])


def format_entries(entries, title):
    """Lists surgery journal entries (`Entry(kind, layers, detail)`).

    Args:
        entries: list of Entry. E.g. `journal.done` or `journal.skipped`.
        title: str. First line of the table; the entry count is appended.

    Returns:
        str. One numbered row per entry, or the title and "(none)".

    Raises:
        ValueError: if an entry has no `kind`, `layers` and `detail`.

    Example:

    >>> from keras_collapse.surgery.passes.journal import Entry
    >>> merged = Entry("merge", ("dense", "dense_1"), "Dense -> Dense")
    >>> print(kc.report.format_entries([merged], "Done"))
    Done (1)
    ...
    1  merge  dense, dense_1  Dense -> Dense
    ...
    """
    for entry in entries:
        if not all(hasattr(entry, a) for a in ("kind", "layers", "detail")):
            raise ValueError(
                "`entries` must be journal entries with `kind`, `layers` and "
                "`detail` (keras_collapse.surgery.passes.journal.Entry). "
                f"Received: an entry {shown(entry)}"
            )
    if not entries:
        return f"{title}: (none)"
    # The same action on every call of a shared layer is one row.
    counts = {}
    for e in entries:
        key = (e.kind, tuple(e.layers), e.detail)
        counts[key] = counts.get(key, 0) + 1
    rows = [
        (
            str(i),
            kind,
            ", ".join(layers),
            detail if count == 1 else f"{detail} ({count} calls)",
        )
        for i, ((kind, layers, detail), count) in enumerate(counts.items(), start=1)
    ]
    return titled_table(
        f"{title} ({len(rows)})", ("#", "Kind", "Layers", "Detail"), rows
    )


def format_latency(result, title="Latency"):
    """Tabulates a `measure_latency` result: one row per model, one column
    per batch size, each cell the median time per batch and the speedup.

    Args:
        result: dict. What `measure_latency` returned.
        title: str. Start of the first line, which also gives the backend and
            the number of repeats. Defaults to "Latency".

    Returns:
        str.

    Raises:
        ValueError: if `result` lacks the keys `measure_latency` returns.

    Example:

    >>> inputs = keras.Input((16,))
    >>> model = keras.Model(inputs, keras.layers.Dense(4)(inputs), name="dense4")
    >>> print(kc.report.format_latency(kc.measure_latency([model], repeats=3)))
    Latency ...
    Model  ...batch 1  ...batch 64
    ...
    dense4 ...
    """
    keys = ("backend", "batch_sizes", "repeats", "reference", "models")
    if not isinstance(result, dict) or not all(k in result for k in keys):
        raise ValueError(
            f"`result` must be the dict `measure_latency` returns, with keys "
            f"{keys}. Received: result={shown(result)}"
        )
    sizes = result["batch_sizes"]
    header = ("Model", *(f"batch {size}" for size in sizes))
    rows = [
        (
            label,
            *(
                f"{_milliseconds(entry['seconds'][size])}  "
                f"{entry['speedup'][size]:.2f}x"
                for size in sizes
            ),
        )
        for label, entry in result["models"].items()
    ]
    heading = (
        f"{title} ({result['backend']}, median of {result['repeats']} runs per "
        f"batch; speedup vs '{result['reference']}')"
    )
    return titled_table(heading, header, rows, "<" + ">" * len(sizes))


def _change(before, after):
    if before == after:
        return "0.0%"
    if before == 0:
        return "n/a"
    return f"{100 * (after - before) / before:+.1f}%"


def _milliseconds(seconds):
    """3 significant digits in ms: '0.0851 ms', '1.23 ms', '123 ms'."""
    ms = seconds * 1e3
    if ms <= 0 or not math.isfinite(ms):
        return f"{ms} ms"
    decimals = max(0, 2 - math.floor(math.log10(ms)))
    return f"{ms:.{decimals}f} ms"


def titled_table(title, header, rows, align=None):
    """Lays out `rows` under `header`; `align` has one '<' or '>' per column."""
    align = align or "<" * len(header)
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(cells):
        return "  ".join(
            f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths, strict=True)
        ).rstrip()

    rule = "=" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join(
        [title, rule, line(header), "-" * len(rule)] + [line(r) for r in rows] + [rule]
    )
