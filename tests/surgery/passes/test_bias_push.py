"""Border-aware bias maps carried forward: the result computes what the
model computes (the oracle), with the maps gone where the road allows."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.graph import Graph
from keras_collapse.layers.bias_map import bias_map_layer
from keras_collapse.layers.bias_map import is_bias_map
from keras_collapse.surgery.passes.bias_push import push_bias_maps
from keras_collapse.surgery.passes.journal import Journal
from tests.testing import TestCase

layers = keras.layers


def bias(shape, seed):
    return bias_map_layer(np.random.default_rng(seed).standard_normal(shape))


class TestPushBiasMaps(TestCase):
    def push(self, model, shape=(1, 8, 8, 3)):
        graph = Graph.from_model(model)
        journal = Journal()
        removed = push_bias_maps(graph, journal)
        pushed = graph.to_model()
        x = self.random_inputs(shape, seed=3)
        self.assert_close(pushed(x), model(x), atol=1e-4)
        maps = sum(is_bias_map(layer) for layer in pushed.layers)
        return pushed, removed, maps

    @pytest.mark.parametrize("strides", [1, 2])
    def test_a_map_joins_the_next_map_through_a_conv(self, strides):
        inputs = keras.Input((8, 8, 3))
        h = bias((8, 8, 4), 0)(layers.Conv2D(4, 3, padding="same")(inputs))
        h = layers.Conv2D(5, 3, strides, padding="same")(h)
        side = 8 // strides
        h = layers.ReLU()(bias((side, side, 5), 1)(h))
        _, removed, maps = self.push(keras.Model(inputs, h))
        assert (removed, maps) == (1, 1)

    def test_a_chain_of_maps_becomes_one(self):
        inputs = keras.Input((8, 8, 3))
        h = inputs
        for i in range(4):
            if i % 2:
                conv = layers.DepthwiseConv2D(3, padding="same")
            else:
                conv = layers.Conv2D(3, 3, padding="same")
            h = bias((8, 8, 3), i)(conv(h))
        _, removed, maps = self.push(keras.Model(inputs, layers.ReLU()(h)))
        assert (removed, maps) == (3, 1)

    def test_through_pooling_into_the_dense_bias(self):
        inputs = keras.Input((8, 8, 3))
        h = bias((8, 8, 4), 0)(layers.Conv2D(4, 3, padding="same")(inputs))
        h = layers.Conv2D(6, 1)(h)
        h = layers.GlobalAveragePooling2D()(h)
        out = layers.Dense(2, activation="softmax")(h)  # before its activation
        pushed, removed, maps = self.push(keras.Model(inputs, out))
        assert (removed, maps) == (1, 0)
        assert len(pushed.layers) == 5

    def test_through_an_add(self):
        inputs = keras.Input((8, 8, 3))
        a = bias((8, 8, 3), 0)(layers.Conv2D(3, 3, padding="same")(inputs))
        h = layers.Add()([a, inputs])
        h = layers.Conv2D(3, 3, padding="same")(h)
        h = layers.ReLU()(bias((8, 8, 3), 1)(h))
        _, removed, maps = self.push(keras.Model(inputs, h))
        assert (removed, maps) == (1, 1)

    @pytest.mark.parametrize("road", ["relu", "two readers", "output", "flatten"])
    def test_a_map_stays_where_the_road_ends(self, road):
        inputs = keras.Input((8, 8, 3))
        h = bias((8, 8, 3), 0)(layers.Conv2D(3, 3, padding="same")(inputs))
        if road == "relu":
            out = layers.Dense(2)(layers.GlobalAveragePooling2D()(layers.ReLU()(h)))
        elif road == "two readers":
            out = [layers.Conv2D(2, 1)(h), layers.Conv2D(2, 1)(h)]
        elif road == "output":
            out = h
        else:
            out = layers.Dense(2)(layers.Flatten()(h))
        pushed, removed, maps = self.push(keras.Model(inputs, out))
        assert (removed, maps) == (0, 1)

    def test_the_model_is_not_modified(self):
        inputs = keras.Input((8, 8, 3))
        h = bias((8, 8, 4), 0)(layers.Conv2D(4, 3, padding="same")(inputs))
        model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(h)))
        before = [w.copy() for w in model.get_weights()]
        self.push(model)
        for old, new in zip(before, model.get_weights()):
            np.testing.assert_array_equal(old, new)


class TestFullyCollapsedMobileNet(TestCase):
    def test_ten_block_maps_become_one(self):
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
        import models

        model = models.mobilenet_v2_style(lock="all")
        small, report = kc.surgery(model, return_report=True)
        x = self.random_inputs((2, 32, 32, 3), seed=4)
        self.assert_close(small(x), model(x), atol=1e-4)
        assert sum(is_bias_map(layer) for layer in small.layers) == 1
        assert report.count("bias_push") == 9
