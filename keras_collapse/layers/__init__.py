"""Collapsible activation layers."""

from keras_collapse.layers.bias_map import BiasMap
from keras_collapse.layers.collapsible_activation import CollapsibleActivation
from keras_collapse.layers.collapsible_prelu import CollapsiblePReLU

__all__ = ["BiasMap", "CollapsibleActivation", "CollapsiblePReLU"]
