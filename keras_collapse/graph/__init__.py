"""Reading a Keras model into an editable graph, and rebuilding it."""

from keras_collapse.graph.ir import Graph
from keras_collapse.graph.ir import Node
from keras_collapse.graph.ir import Ref

__all__ = ["Graph", "Node", "Ref"]
