"""Importance scores: which activations can be linearized, and how safely."""

from keras_collapse.scores.batchnorm import BatchNormAnalysis
from keras_collapse.scores.batchnorm import LayerStates
from keras_collapse.scores.batchnorm import analyze_batchnorm

__all__ = ["BatchNormAnalysis", "LayerStates", "analyze_batchnorm"]
