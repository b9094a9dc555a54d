"""The one unique-name rule (`graph/names.py`) and the graph's use of it."""

import keras
import pytest

from keras_collapse.graph import Graph
from keras_collapse.graph import rewrite
from keras_collapse.graph.names import Names

layers = keras.layers


class TestNames:
    def test_suffixes_count_up_from_one(self):
        names = Names(taken={"d", "d_1"})
        assert names.take("d") == "d_2" and names.take("d") == "d_3"
        assert names.take("e") == "e" and names.take("e") == "e_1"

    def test_alternatives_then_a_suffix_on_the_last(self):
        names = Names(taken={"c", "model_c"})
        assert names.take("c", ["model_c"]) == "model_c_1"
        assert names.take("z", ["model_z"]) == "z"

    def test_reserved_names_are_free_only_to_their_owner(self):
        names = Names(reserved={"out"})
        assert names.take("out") == "out_1"
        assert names.take("out", owner="out") == "out"

    def test_keep_false_does_not_take_the_name(self):
        names = Names()
        assert names.take("a", keep=False) == "a" and names.is_free("a")

    @pytest.mark.parametrize("base, want", [("a", "a_1"), ("fresh", "fresh")])
    def test_unique_name_in_a_graph(self, base, want):
        inputs = keras.Input((2,))
        graph = Graph.from_model(keras.Model(inputs, layers.Dense(2, name="a")(inputs)))
        assert rewrite.unique_name(graph, base) == want

    def test_a_replacement_keeps_the_name_of_the_layer_it_replaces(self):
        inputs = keras.Input((2,))
        graph = Graph.from_model(keras.Model(inputs, layers.Dense(2, name="a")(inputs)))
        (node,) = graph.layer_nodes()
        assert rewrite.replacement_name(graph, node) == "a"
        assert rewrite.replacement_name(graph, node, "b") == "b"
