"""Callbacks that linearize activations while a model trains."""

from keras_collapse.callbacks.tlc import TLCCallback

__all__ = ["TLCCallback"]
