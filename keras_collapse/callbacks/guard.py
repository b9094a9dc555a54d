"""How a change is judged: a monitored value, its direction, a tolerance.

The vocabulary is Keras' `MonitorCallback` (EarlyStopping, ModelCheckpoint):
`monitor`, `mode` ("auto" finds the direction from the metric itself, as
Keras does; a metric that does not say is a ValueError naming `mode`).
"""

import math

from keras_collapse.checks import check_choice
from keras_collapse.checks import check_number
from keras_collapse.graph import keras_internals

MODES = ("auto", "min", "max")


def check_monitor(monitor, mode, tolerance):
    """Raises a ValueError for a bad `monitor`, `mode` or `tolerance`."""
    if not isinstance(monitor, str):
        raise ValueError(
            f"`monitor` must be 'auto' or a metric name. Received: monitor={monitor!r}"
        )
    check_choice("mode", mode, MODES)
    check_number(
        "tolerance",
        tolerance,
        0,
        allow_none=True,
        what="the drop of the monitored value a change may cost",
    )


def accuracy_key(logs, prefix=""):
    """The first accuracy-like key: `val_...acc...` with prefix "val_", a
    training one without. Entries a linearization callback writes are
    skipped."""
    for key in logs:
        if not key.startswith(prefix) or is_callback_entry(key):
            continue
        if (prefix or not key.startswith("val_")) and "acc" in key[len(prefix) :]:
            return key
    return None


def is_callback_entry(key):
    """`<prefix>_linearized`, `<prefix>_val_<metric>`...: what a linearization
    callback writes into the logs, never a metric to monitor."""
    return key.endswith(("_linearized", "_rollbacks")) or (
        "_val_" in key and not key.startswith("val_")
    )


class Guard:
    """Judges a change by how far the monitored value fell from its value
    when the change was made.

    Args:
        monitor: the metric's name in `logs` (or in the callback's own
            measurement), or "auto" (resolved by the engine).
        mode: "auto", "min" or "max". "auto" takes the direction from the
            metric: "loss" (and `val_loss`) is minimized; a compiled metric
            says its own direction (accuracies, AUC: up; a loss used as a
            metric: down), as Keras' `MonitorCallback` reads it.
        tolerance: float >= 0 or None, the drop of the monitored value a
            change may cost and still be kept: absolute when maximized (0.01
            is one point of accuracy), relative when minimized (0.05 is 5 %
            more loss). None: 0.02 and 0.05.
    """

    def __init__(self, monitor="auto", mode="auto", tolerance=None):
        check_monitor(monitor, mode, tolerance)
        self.monitor = monitor
        self.mode = mode
        self.tolerance = tolerance
        self.monitored = None
        self.maximize = None

    def resolve(self, key, model=None):
        """Fixes the monitored key and its direction.

        Raises:
            ValueError: with `mode="auto"`, when the direction of `key`
                cannot be told (a custom metric that does not say).
        """
        self.monitored = key
        if self.mode != "auto":
            self.maximize = self.mode == "max"
            return
        name = key.removeprefix("val_")
        if name == "loss" or name.endswith("_loss"):
            self.maximize = False
            return
        direction = keras_internals.metric_direction(model, name)
        if direction is None:
            raise ValueError(
                f"Cannot tell whether the monitored metric '{key}' should be "
                "maximized or minimized: it does not say its direction. Pass "
                "`mode='max'` (higher is better, e.g. an accuracy or AUC) or "
                "`mode='min'` (lower is better, e.g. an error)."
            )
        self.maximize = direction == "up"

    def better(self, a, b):
        """The better of two values."""
        return max(a, b) if self.maximize else min(a, b)

    def within(self, value, reference):
        """Whether `value` fell no more than the tolerance from `reference`."""
        if reference is None or not math.isfinite(value):
            return math.isfinite(value)
        return within(value, reference, self.maximize, self.tolerance)


def within(value, reference, maximize, tolerance=None, scale=1.0):
    """Whether `value` fell no more than `scale` times the tolerance from
    `reference`: absolute when maximized (None: 0.02), relative when
    minimized (None: 0.05)."""
    if tolerance is None:
        tolerance = 0.02 if maximize else 0.05
    tolerance *= scale
    if maximize:
        return value >= reference - tolerance
    return value <= reference + tolerance * abs(reference)
