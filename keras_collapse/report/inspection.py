"""The text of an `Inspection` (what `keras_collapse.inspect` and
`keras-collapse inspect` print)."""

from keras_collapse.report.table import STAT_ROWS
from keras_collapse.report.table import titled_table


def format_inspection(inspection, heading=None):
    """The statistics, collapsible activations, BN analysis, potential and
    notes of `inspection`, under `heading` (default: the model's name)."""
    stats = inspection.stats
    parts = [
        heading or f"Model '{inspection.model}'",
        "\n".join(
            [
                titled_table(
                    "Model statistics",
                    ("", "Value"),
                    [
                        (label, f"{getattr(stats, field):,}")
                        for label, field in STAT_ROWS
                    ],
                    "<>",
                ),
                *(f"Note: {n}" for n in stats.notes),
            ]
        ),
        _collapsible_table(inspection.collapsible),
    ]
    if inspection.batchnorm_analysis is not None:
        parts.append(str(inspection.batchnorm_analysis))
    if inspection.potential is not None:
        parts.append(str(inspection.potential))
    if inspection.notes:
        parts.append("\n".join(inspection.notes))
    return "\n\n".join(parts)


def _collapsible_table(layers):
    if not layers:
        return (
            "Collapsible activations: none (keras_collapse.make_collapsible "
            "converts ReLU, GELU, ... activations into them)."
        )
    rows = [
        (
            layer["name"],
            layer["activation"],
            _format_alpha(layer),
            "yes" if layer["linear"] else "no",
            "yes" if layer["locked"] else "no",
        )
        for layer in layers
    ]
    linear = sum(layer["linear"] for layer in layers)
    return titled_table(
        f"Collapsible activations ({len(layers)}, {linear} linear)",
        ("Layer", "Activation", "Alpha", "Linear", "Locked"),
        rows,
        "<<><<",
    )


def _format_alpha(layer):
    if layer["alpha_size"] == 1:
        return f"{layer['alpha_mean']:.4g}"
    return (
        f"mean {layer['alpha_mean']:.4g} ({layer['alpha_min']:.4g} to "
        f"{layer['alpha_max']:.4g}, {layer['alpha_size']} values)"
    )
