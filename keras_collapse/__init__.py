"""keras_collapse: make trained Keras 3 networks shallower and faster."""

from keras_collapse.callbacks import EASIERCallback
from keras_collapse.callbacks import JointLinearizationCallback
from keras_collapse.callbacks import LayerCollapseCallback
from keras_collapse.callbacks import LinearizationCallback
from keras_collapse.callbacks import NEPENTHECallback
from keras_collapse.callbacks import TLCCallback
from keras_collapse.collapse import collapse
from keras_collapse.collapsible import collapsible_layers
from keras_collapse.collapsible import lock_linear
from keras_collapse.collapsible import lock_near_linear
from keras_collapse.collapsible import sync_training_state
from keras_collapse.convert import make_collapsible
from keras_collapse.cost_model import MacCostModel
from keras_collapse.cost_model import MeasuredCostModel
from keras_collapse.graph.unroll import register_unroller
from keras_collapse.layers import BiasMap
from keras_collapse.layers import CollapsibleActivation
from keras_collapse.layers import CollapsiblePReLU
from keras_collapse.linearize import linearize
from keras_collapse.masks import ZeroMask
from keras_collapse.masks import hold_at_zero
from keras_collapse.prune import allocate_budget
from keras_collapse.prune import prunable_layers
from keras_collapse.prune import prune_by_count
from keras_collapse.prune import prune_by_fraction
from keras_collapse.prune import sparsity
from keras_collapse.recalibrate import recalibrate_batchnorm
from keras_collapse.regularizers import LinearityRegularizer
from keras_collapse.report import SurgeryReport
from keras_collapse.report import measure_latency
from keras_collapse.report import model_stats
from keras_collapse.scores import ActivationStatistics
from keras_collapse.scores import BatchNormAnalysis
from keras_collapse.scores import activation_statistics
from keras_collapse.scores import analyze_batchnorm
from keras_collapse.surgery import surgery
from keras_collapse.units import MergeUnit
from keras_collapse.units import MergeUnits
from keras_collapse.units import merge_units
from keras_collapse.verify import VerificationError
from keras_collapse.version import __version__

__all__ = [
    "ActivationStatistics",
    "BatchNormAnalysis",
    "BiasMap",
    "CollapsibleActivation",
    "CollapsiblePReLU",
    "EASIERCallback",
    "JointLinearizationCallback",
    "LayerCollapseCallback",
    "LinearityRegularizer",
    "LinearizationCallback",
    "MacCostModel",
    "MeasuredCostModel",
    "MergeUnit",
    "MergeUnits",
    "NEPENTHECallback",
    "SurgeryReport",
    "TLCCallback",
    "VerificationError",
    "ZeroMask",
    "__version__",
    "activation_statistics",
    "allocate_budget",
    "analyze_batchnorm",
    "collapse",
    "collapsible_layers",
    "hold_at_zero",
    "linearize",
    "lock_linear",
    "lock_near_linear",
    "make_collapsible",
    "measure_latency",
    "merge_units",
    "model_stats",
    "prunable_layers",
    "prune_by_count",
    "prune_by_fraction",
    "recalibrate_batchnorm",
    "register_unroller",
    "sparsity",
    "surgery",
    "sync_training_state",
]
