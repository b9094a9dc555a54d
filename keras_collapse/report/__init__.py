"""Measuring what a surgery changed: depth, activations, parameters, MACs,
latency, and plain-text tables of them; the reports `collapse`, `surgery`
and `inspect` return."""

from keras_collapse.report.collapse_report import CollapseReport
from keras_collapse.report.latency import measure_latency
from keras_collapse.report.potential import Potential
from keras_collapse.report.stats import ModelStats
from keras_collapse.report.stats import model_stats
from keras_collapse.report.surgery_report import SurgeryReport
from keras_collapse.report.table import format_entries
from keras_collapse.report.table import format_latency
from keras_collapse.report.table import format_stats_table

__all__ = [
    "CollapseReport",
    "ModelStats",
    "Potential",
    "SurgeryReport",
    "format_entries",
    "format_latency",
    "format_stats_table",
    "measure_latency",
    "model_stats",
]
