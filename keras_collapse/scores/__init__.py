"""Importance scores: which activations can be linearized, and how safely."""

from keras_collapse.scores.batchnorm import BatchNormAnalysis
from keras_collapse.scores.batchnorm import LayerStates
from keras_collapse.scores.batchnorm import analyze_batchnorm
from keras_collapse.scores.scorers import BatchNormScorer
from keras_collapse.scores.scorers import EntropyScorer
from keras_collapse.scores.scorers import GaussianScorer
from keras_collapse.scores.scorers import LossScorer
from keras_collapse.scores.scorers import RandomScorer
from keras_collapse.scores.scorers import Score
from keras_collapse.scores.scorers import Scorer
from keras_collapse.scores.statistics import ActivationStatistics
from keras_collapse.scores.statistics import LayerStatistics
from keras_collapse.scores.statistics import activation_statistics

__all__ = [
    "ActivationStatistics",
    "BatchNormAnalysis",
    "BatchNormScorer",
    "EntropyScorer",
    "GaussianScorer",
    "LayerStates",
    "LayerStatistics",
    "LossScorer",
    "RandomScorer",
    "Score",
    "Scorer",
    "activation_statistics",
    "analyze_batchnorm",
]
