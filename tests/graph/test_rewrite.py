"""The rewrite API the passes edit graphs with (`graph/rewrite.py`)."""

import keras
import numpy as np

from keras_collapse.graph import Graph
from keras_collapse.graph import Ref
from keras_collapse.graph import rewrite
from tests.testing import TestCase

layers = keras.layers


def diamond():
    """x -> a -> (b, c) -> add -> out, with `c` also a model output."""
    inputs = keras.Input((4,), name="x")
    a = layers.Dense(4, name="a")(inputs)
    b = layers.Dense(4, name="b")(a)
    c = layers.ReLU(name="c")(a)
    out = layers.Add(name="add")([b, c])
    return keras.Model(inputs, [out, c])


def node_named(graph, name):
    (node,) = [n for n in graph.layer_nodes() if n.layer.name == name]
    return node


class TestReading:
    def test_readers_of_a_tensor(self):
        graph = Graph.from_model(diamond())
        readers = rewrite.readers(graph)
        a, c = node_named(graph, "a"), node_named(graph, "c")
        assert {n.layer.name for n in readers.of(Ref(a.id))} == {"b", "c"}
        # A model output counts as a reader, seen as None.
        assert [getattr(n, "layer", None) for n in readers.of(Ref(c.id))][-1] is None
        assert readers.of(Ref(999)) == []

    def test_sole_reader_and_one_reader(self):
        graph = Graph.from_model(diamond())
        readers = rewrite.readers(graph)
        a, b, c = (node_named(graph, n) for n in "abc")
        add = node_named(graph, "add")
        assert readers.sole(Ref(b.id)) is add and readers.has_one(Ref(b.id))
        assert readers.sole(Ref(a.id)) is None and not readers.has_one(Ref(a.id))
        # Read by the Add and by the model: neither is its sole reader.
        assert readers.sole(Ref(c.id)) is None
        # Read by the model alone: one reader, but no node.
        assert readers.has_one(Ref(add.id)) and readers.sole(Ref(add.id)) is None

    def test_reach_walks_on_only_through_what_the_predicate_passes(self):
        graph = Graph.from_model(diamond())
        (x,) = keras.tree.flatten(graph.inputs)

        def dense(node, index):
            return isinstance(node.layer, layers.Dense)

        reached = {n.layer.name for n in rewrite.reach(graph, [x], dense)}
        # Through a (a Dense) to b and c; through b to add; c stops the walk
        # but add is already met through b.
        assert reached == {"a", "b", "c", "add"}
        stop_at_a = rewrite.reach(graph, [x], lambda node, index: False)
        assert [n.layer.name for n in stop_at_a] == ["a"]

    def test_reach_meets_each_node_once(self):
        graph = Graph.from_model(diamond())
        (x,) = keras.tree.flatten(graph.inputs)
        reached = rewrite.reach(graph, [x, x], lambda node, index: True)
        assert len(reached) == len({n.id for n in reached}) == 4


class TestEditing(TestCase):
    def test_set_kernel_and_bias_casts_and_turns_the_bias_on(self):
        inputs = keras.Input((3,))
        dense = layers.Dense(2, use_bias=False, dtype="float16", name="d")
        model = keras.Model(inputs, dense(inputs))
        graph = Graph.from_model(model)
        (node,) = graph.layer_nodes()
        kernel = np.arange(6, dtype="float64").reshape(3, 2)
        bias = np.array([0.5, -1.0])
        layer = rewrite.set_kernel_and_bias(graph, node, kernel, bias)
        assert node.layer is layer and layer.use_bias and layer.name == "d"
        assert [w.dtype for w in node.weights] == [np.float16, np.float16]
        x = np.ones((1, 3), "float16")
        self.assert_close(graph.to_model()(x), x @ kernel + bias, atol=1e-2)
        assert not dense.use_bias  # the model's own layer is untouched

    def test_reconfigure_renames_a_shared_layer(self):
        inputs = keras.Input((3,))
        shared = layers.Dense(3, name="s")
        model = keras.Model(inputs, shared(shared(inputs)))
        graph = Graph.from_model(model)
        first, second = graph.layer_nodes()
        kernel, bias = shared.get_weights()
        rewrite.reconfigure(graph, first, {"units": 3}, [kernel * 2, bias])
        # The second call still uses "s": the new layer needs another name.
        assert first.layer.name == "s_1" and second.layer is shared
        x = self.random_inputs((2, 3))
        want = (x @ (kernel * 2) + bias) @ kernel + bias
        self.assert_close(graph.to_model()(x), want, atol=1e-5)

    def test_set_layer_rewires_and_drops_keyword_arguments(self):
        graph = Graph.from_model(diamond())
        add, b = node_named(graph, "add"), node_named(graph, "b")
        mul = rewrite.set_layer(
            graph, add, layers.Multiply(name="mul"), args=([Ref(b.id), Ref(b.id)],)
        )
        assert add.layer is mul and add.kwargs == {} and add.weights is None
        model = graph.to_model()
        x = self.random_inputs((2, 4))
        a_w, a_b = model.get_layer("a").get_weights()
        b_w, b_b = model.get_layer("b").get_weights()
        h = (x @ a_w + a_b) @ b_w + b_b
        self.assert_close(model(x)[0], h * h, atol=1e-5)

    def test_remove_and_bypass(self):
        inputs = keras.Input((4,))
        a = layers.Dense(4, name="a")(inputs)
        drop = layers.Dropout(0.5, name="drop")(a)
        model = keras.Model(inputs, layers.Dense(2, name="b")(drop))
        graph = Graph.from_model(model)
        graph.bypass(node_named(graph, "drop"))
        assert [n.layer.name for n in graph.layer_nodes()] == ["a", "b"]
        x = self.random_inputs((3, 4))
        self.assert_close(graph.to_model()(x), model(x), atol=1e-6)
        b = node_named(graph, "b")
        rewrite.remove(graph, b)
        assert b.id not in graph.nodes

    def test_insert_after_moves_every_reader_and_the_output(self):
        graph = Graph.from_model(diamond())
        a = node_named(graph, "a")
        after = rewrite.insert_after(graph, a, layers.Rescaling(2.0, name="twice"))
        assert after.args == (Ref(a.id),)
        readers = rewrite.readers(graph)
        assert [n.id for n in readers.of(Ref(a.id))] == [after.id]
        assert {n.layer.name for n in readers.of(Ref(after.id))} == {"b", "c"}

    def test_resize_channels(self):
        graph = Graph.from_model(diamond())
        a = node_named(graph, "a")
        rewrite.resize_channels(a, 7)
        assert a.shape == (None, 7)

    def test_copies_do_not_share_edits(self):
        graph = Graph.from_model(diamond())
        copy = graph.copy()
        rewrite.set_layer(copy, node_named(copy, "c"), layers.Identity(name="c"))
        assert type(node_named(graph, "c").layer) is layers.ReLU
