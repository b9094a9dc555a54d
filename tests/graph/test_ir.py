"""The graph IR: reading any functional model and rebuilding it unchanged.

These tests also pin the private Keras structures read in
keras_collapse/graph/keras_internals.py: if a Keras release changes them,
they fail here first.
"""

import keras
import numpy as np
import pytest

from keras_collapse.graph import Graph
from keras_collapse.graph import Ref
from tests.testing import TestCase


def multi_io_model():
    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, keras.layers.Dense(8, activation="relu")(inner_in))
    seq = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8), keras.layers.BatchNormalization()]
    )
    a = keras.Input((8,), name="a")
    b = keras.Input((8,), name="b")
    shared = keras.layers.Dense(8, name="shared")
    h = keras.ops.relu(shared(a) + shared(b))  # raw ops in the graph
    h = seq(inner(h))
    return keras.Model(
        {"a": a, "b": b},
        {
            "x": keras.layers.Dense(3, name="head")(h),
            "y": keras.layers.Concatenate()([h, a]),
        },
    )


class TestRoundTrip(TestCase):
    @pytest.mark.parametrize(
        "name", ["sequential", "multi_io_nested_shared", "mobilenet"]
    )
    def test_rebuilt_model_computes_the_same(self, name):
        if name == "sequential":
            model = keras.Sequential(
                [
                    keras.Input((5,)),
                    keras.layers.Dense(4),
                    keras.layers.ReLU(),
                    keras.layers.Dense(2),
                ]
            )
            x = self.random_inputs((3, 5))
        elif name == "mobilenet":
            model = keras.applications.MobileNetV2(
                weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10
            )
            x = self.random_inputs((2, 32, 32, 3))
        else:
            model = multi_io_model()
            x = {
                "a": self.random_inputs((3, 8)),
                "b": self.random_inputs((3, 8), seed=1),
            }
        rebuilt = Graph.from_model(model).to_model()
        for want, got in zip(
            keras.tree.flatten(model(x)), keras.tree.flatten(rebuilt(x))
        ):
            self.assert_close(got, want, atol=0, rtol=0)
        # Nested models are flattened: no Model inside the rebuilt one.
        assert not any(isinstance(layer, keras.Model) for layer in rebuilt.layers)

    def test_rebuilt_layers_are_independent_copies(self):
        model = multi_io_model()
        rebuilt = Graph.from_model(model).to_model()
        assert rebuilt.get_layer("shared") is not model.get_layer("shared")
        before = model.get_layer("shared").get_weights()[0].copy()
        rebuilt.get_layer("shared").set_weights(
            [np.zeros_like(w) for w in rebuilt.get_layer("shared").get_weights()]
        )
        np.testing.assert_array_equal(
            model.get_layer("shared").get_weights()[0], before
        )

    def test_shared_layer_stays_shared(self):
        rebuilt = Graph.from_model(multi_io_model()).to_model()
        assert len([layer for layer in rebuilt.layers if layer.name == "shared"]) == 1

    def test_nodes_refs_and_consumers(self):
        graph = Graph.from_model(multi_io_model())
        shared_nodes = [
            n for n in graph.layer_nodes() if getattr(n.layer, "name", "") == "shared"
        ]
        assert len(shared_nodes) == 2
        readers = graph.consumers()
        inputs = keras.tree.flatten(graph.inputs)
        assert len(inputs) == 2 and all(isinstance(r, Ref) for r in inputs)
        # Input "a" is read by the shared Dense and by the Concatenate.
        assert len(readers[inputs[0]]) == 2


class TestBadModels(TestCase):
    def test_subclassed_model(self):
        class Net(keras.Model):
            def __init__(self):
                super().__init__()
                self.dense = keras.layers.Dense(3)

            def call(self, x):
                return self.dense(x)

        net = Net()
        net(np.zeros((1, 4), "float32"))
        with pytest.raises(ValueError, match="subclassed model.*functional API"):
            Graph.from_model(net)

    def test_unbuilt_sequential(self):
        with pytest.raises(ValueError, match="no known input shape"):
            Graph.from_model(keras.Sequential([keras.layers.Dense(3)]))

    def test_not_a_model(self):
        with pytest.raises(ValueError, match="Expected a keras.Model"):
            Graph.from_model(keras.layers.Dense(3))
