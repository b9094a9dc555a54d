"""keras_collapse: make trained Keras 3 networks shallower and faster."""

from keras_collapse.collapsible import collapsible_layers
from keras_collapse.collapsible import lock_linear
from keras_collapse.collapsible import sync_training_state
from keras_collapse.layers import CollapsibleActivation
from keras_collapse.layers import CollapsiblePReLU
from keras_collapse.regularizers import LinearityRegularizer
from keras_collapse.version import __version__

__all__ = [
    "CollapsibleActivation",
    "CollapsiblePReLU",
    "LinearityRegularizer",
    "__version__",
    "collapsible_layers",
    "lock_linear",
    "sync_training_state",
]
