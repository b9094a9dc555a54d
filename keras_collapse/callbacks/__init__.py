"""Callbacks that linearize activations while a model trains."""

from keras_collapse.callbacks.easier import EASIERCallback
from keras_collapse.callbacks.engine import LinearizationCallback
from keras_collapse.callbacks.joint import JointLinearizationCallback
from keras_collapse.callbacks.layercollapse import LayerCollapseCallback
from keras_collapse.callbacks.nepenthe import NEPENTHECallback
from keras_collapse.callbacks.tlc import TLCCallback

__all__ = [
    "EASIERCallback",
    "JointLinearizationCallback",
    "LayerCollapseCallback",
    "LinearizationCallback",
    "NEPENTHECallback",
    "TLCCallback",
]
