"""Measuring what a surgery changed: depth, activations, parameters, MACs,
latency, and plain-text tables of them."""

from keras_collapse.report.latency import measure_latency
from keras_collapse.report.stats import ModelStats
from keras_collapse.report.stats import model_stats
from keras_collapse.report.surgery_report import SurgeryReport
from keras_collapse.report.table import format_entries
from keras_collapse.report.table import format_latency
from keras_collapse.report.table import format_stats_table

__all__ = [
    "ModelStats",
    "SurgeryReport",
    "format_entries",
    "format_latency",
    "format_stats_table",
    "measure_latency",
    "model_stats",
]
