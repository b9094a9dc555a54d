"""Composite layers read as the subgraph of the layers they call: traced by
default, taught with `register_unroller`, kept whole (opaque, reported) when
neither works."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.algebra import attention_macs
from keras_collapse.algebra import dense_macs
from keras_collapse.algebra import einsum_macs
from keras_collapse.graph import Graph
from tests.integration import builders
from tests.testing import TestCase

layers = keras.layers


class MLPBlock(layers.Layer):
    """fc1 -> gelu -> dropout -> fc2 + residual, all weights in sublayers."""

    def __init__(self, units, hidden, **kwargs):
        super().__init__(**kwargs)
        self.units, self.hidden = units, hidden
        self.fc1 = layers.Dense(hidden, activation="gelu", name="fc1")
        self.drop = layers.Dropout(0.1, name="drop")
        self.fc2 = layers.Dense(units, name="fc2")

    def call(self, x, training=None):
        return x + self.fc2(self.drop(self.fc1(x), training=training))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "hidden": self.hidden}


class Scaled(layers.Layer):
    """A Dense -> ReLU whose output is scaled by a weight of its own."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = layers.Dense(units, activation="relu", name="dense")

    def build(self, shape):
        self.dense.build(shape)
        self.scale = self.add_weight(
            shape=(self.units,), initializer="ones", name="scale"
        )

    def call(self, x):
        return self.dense(x) * self.scale

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class Untraceable(layers.Layer):
    """Python code that needs concrete values (its output shape is declared,
    so Keras builds it without tracing): cannot be traced."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = layers.Dense(4, activation="relu", name="dense")

    def call(self, x):
        if isinstance(x, keras.KerasTensor):
            raise TypeError("needs concrete values")
        return self.dense(x)

    def compute_output_shape(self, shape):
        return (*shape[:-1], 4)


def block_model(block, features=6, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5, features))
    h = layers.Dense(features, name="stem")(inputs)
    h = block(h)
    return keras.Model(inputs, layers.Dense(3, name="head")(h))


def numpy(x):
    return keras.ops.convert_to_numpy(x)


class TestTracing(TestCase):
    def test_composite_layer_is_read_as_its_sublayers(self):
        model = block_model(MLPBlock(6, 12, name="mlp"))
        graph = Graph.from_model(model)
        names = [getattr(n.layer, "name", None) for n in graph.layer_nodes()]
        assert "mlp" not in names
        assert {"fc1", "fc2", "drop"} <= set(names)
        assert graph.opaque == []

    def test_make_collapsible_reaches_inside_and_is_exact(self):
        model = block_model(MLPBlock(6, 12, name="mlp"))
        new = kc.make_collapsible(model)
        # Sublayers are named after the composite layer they came from.
        assert [layer.name for layer in kc.collapsible_layers(new)] == ["mlp_fc1_gelu"]
        assert "mlp_fc2" in [layer.name for layer in new.layers]
        x = self.random_inputs((4, 5, 6))
        self.assert_close(new(x), model(x), atol=1e-6)
        # Training mode still drops out inside the unrolled block.
        assert not np.allclose(numpy(new(x, training=True)), numpy(new(x)))

    def test_linear_mlp_merges_into_one_dense_exactly(self):
        model = block_model(MLPBlock(6, 12, name="mlp"))
        new = kc.make_collapsible(model)
        kc.lock_linear(new, kc.collapsible_layers(new))
        small, report = kc.surgery(new, return_report=True)
        assert report.after.depth == report.before.depth - 1
        # NumPy oracle of the merged MLP: K1 @ K2, b1 @ K2 + b2.
        block = model.get_layer("mlp")
        k1, b1 = (numpy(w) for w in block.fc1.weights)
        k2, b2 = (numpy(w) for w in block.fc2.weights)
        merged = [
            layer
            for layer in small.layers
            if isinstance(layer, layers.Dense)
            and layer.kernel.shape == (6, 6)
            and layer.name not in ("stem",)
        ]
        assert len(merged) == 1
        kernel, bias = (numpy(w) for w in merged[0].weights)
        self.assert_close(kernel, k1 @ k2, atol=1e-5)
        self.assert_close(bias, b1 @ k2 + b2, atol=1e-5)
        x = self.random_inputs((3, 5, 6))
        self.assert_close(small(x), new(x), atol=1e-5)

    def test_input_model_keeps_its_weights_and_layers(self):
        model = block_model(MLPBlock(6, 12, name="mlp"))
        weights = [w.copy() for w in model.get_weights()]
        config = model.get_layer("mlp").get_config()
        new = kc.make_collapsible(model)
        kc.lock_linear(new, kc.collapsible_layers(new))
        small = kc.surgery(new)
        for before, after in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(before, after)
        assert model.get_layer("mlp").get_config() == config
        ours = {id(v) for v in model.weights}
        assert not ours & {id(v) for v in new.weights}
        assert not ours & {id(v) for v in small.weights}

    def test_result_saves_and_loads(self, tmp_path):
        model = block_model(MLPBlock(6, 12, name="mlp"))
        new = kc.make_collapsible(model)
        x = self.random_inputs((2, 5, 6))
        loaded = self.save_and_load(new, tmp_path)
        self.assert_close(loaded(x), model(x), atol=1e-6)

    def test_nested_composites_are_named_by_their_whole_scope(self):
        class Block(layers.Layer):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.mlp = MLPBlock(6, 12, name="mlp")

            def call(self, x):
                return self.mlp(x)

        class Encoder(layers.Layer):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.blocks = [Block(name=f"block_{i}") for i in range(3)]

            def call(self, x):
                for block in self.blocks:
                    x = block(x)
                return x

        inputs = keras.Input((5, 6))
        model = keras.Model(inputs, Encoder(name="encoder")(inputs))
        new = kc.make_collapsible(model)
        assert [layer.name for layer in kc.collapsible_layers(new)] == [
            f"encoder_block_{i}_mlp_fc1_gelu" for i in range(3)
        ]
        names = [layer.name for layer in new.layers]
        assert [f"encoder_block_{i}_mlp_fc2" for i in range(3)] == [
            n for n in names if n.endswith("_fc2")
        ]
        x = self.random_inputs((2, 5, 6))
        self.assert_close(new(x), model(x), atol=1e-6)

    def test_deepest_fraction(self):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((5, 6))
        h = inputs
        for i in range(4):
            h = MLPBlock(6, 12, name=f"mlp{i}")(h)
        model = keras.Model(inputs, h)
        half = kc.make_collapsible(model, fraction=0.5)
        assert [layer.name for layer in kc.collapsible_layers(half)] == [
            "mlp2_fc1_gelu",
            "mlp3_fc1_gelu",
        ]
        one = kc.make_collapsible(model, fraction=0.1)  # ceil: at least one
        assert [layer.name for layer in kc.collapsible_layers(one)] == ["mlp3_fc1_gelu"]
        # Names inside a composite layer: its sublayer's own, or prefixed.
        picked = kc.make_collapsible(model, layer_names=["mlp1_fc1"])
        assert [layer.name for layer in kc.collapsible_layers(picked)] == [
            "mlp1_fc1_gelu"
        ]
        for bad in (0, 1.5, -0.1, True, "half"):
            with pytest.raises(ValueError, match="fraction"):
                kc.make_collapsible(model, fraction=bad)


class TestOpaque(TestCase):
    def test_own_weights_keep_a_layer_whole_and_reported(self):
        model = block_model(Scaled(6, name="scaled"))
        graph = Graph.from_model(model)
        assert [(o.name, o.class_name) for o in graph.opaque] == [("scaled", "Scaled")]
        assert "scale" in graph.opaque[0].reason
        with pytest.warns(UserWarning, match="register_unroller"):
            new = kc.make_collapsible(model)
        assert kc.collapsible_layers(new) == []
        small, report = kc.surgery(model, return_report=True)
        (entry,) = [e for e in report.skipped if e.kind == "opaque"]
        assert entry.layers == ("scaled",) and "register_unroller" in entry.detail
        x = self.random_inputs((2, 5, 6))
        self.assert_close(small(x), model(x), atol=1e-5)
        # Kept whole with copies of its weights, not shared.
        assert not {id(v) for v in model.weights} & {id(v) for v in small.weights}

    def test_untraceable_call_is_opaque(self):
        model = block_model(Untraceable(name="untraceable"), features=4)
        graph = Graph.from_model(model)
        (opaque,) = graph.opaque
        assert opaque.name == "untraceable" and "traced" in opaque.reason
        x = self.random_inputs((2, 5, 4))
        self.assert_close(kc.surgery(model)(x), model(x), atol=1e-5)

    def test_user_taught_layer(self):
        class Taught(Scaled):
            pass

        def unroll(layer, x):
            # The layer's own Dense; its own weight as a Rescaling copy.
            scale = layers.Rescaling(numpy(layer.scale), name=f"{layer.name}_scale")
            return scale(layer.dense(x))

        kc.register_unroller(Taught, unroll)
        model = block_model(Taught(6, name="taught"))
        model.get_layer("taught").scale.assign(np.linspace(0.5, 2, 6))
        graph = Graph.from_model(model)
        assert graph.opaque == []
        new = kc.make_collapsible(model)
        assert [layer.name for layer in kc.collapsible_layers(new)] == [
            "taught_dense_relu"
        ]
        x = self.random_inputs((2, 5, 6))
        self.assert_close(new(x), model(x), atol=1e-6)

    def test_wrong_unroller_is_caught(self):
        class Miscounted(Scaled):
            pass

        kc.register_unroller(Miscounted, lambda layer, x: layer.dense(x))
        model = block_model(Miscounted(6, name="bad"))
        model.get_layer("bad").scale.assign(np.full(6, 3.0))
        (opaque,) = Graph.from_model(model).opaque
        assert "differently" in opaque.reason
        x = self.random_inputs((2, 5, 6))
        self.assert_close(kc.surgery(model)(x), model(x), atol=1e-5)

    def test_registered_none_stays_whole(self):
        class Kept(MLPBlock):
            pass

        kc.register_unroller(Kept, None)
        model = block_model(Kept(6, 12, name="kept"))
        (opaque,) = Graph.from_model(model).opaque
        assert opaque.name == "kept" and "registered" in opaque.reason

    def test_bad_registrations(self):
        with pytest.raises(ValueError, match="Layer subclass"):
            kc.register_unroller(int)
        with pytest.raises(ValueError, match="callable"):
            kc.register_unroller(MLPBlock, "unroll")

    def test_keras_own_composites_stay_whole(self):
        inputs = keras.Input((5, 8))
        h = layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
        model = keras.Model(inputs, h)
        graph = Graph.from_model(model)
        assert [n.layer.name for n in graph.layer_nodes()] == ["mha"]
        assert graph.opaque == []


class TestCosts(TestCase):
    def test_einsum_macs(self):
        # A Dense written as an einsum costs what the Dense does.
        assert einsum_macs("abc,cd->abd", (16, 32), (10, 32)) == dense_macs(
            (16, 32), 10
        )
        # Heads: "abc,cde->abde" contracts c only.
        assert einsum_macs("abc,cde->abde", (16, 2, 8), (10, 2, 8)) == 10 * 2 * 8 * 16
        with pytest.raises(ValueError, match="kernel"):
            einsum_macs("ab,bc->ac", (4, 4, 4), (4,))

    def test_attention_macs_counted_in_stats(self):
        inputs = keras.Input((10, 16))
        h = layers.MultiHeadAttention(2, 8, name="mha")(inputs, inputs)
        stats = kc.model_stats(keras.Model(inputs, h))
        # Oracle: 4 projections of 10 tokens (16 -> 2 x 8 and back), scores
        # 2 x 10 x 10 x 8, weighted values 2 x 10 x 10 x 8.
        expected = 4 * 10 * 16 * 16 + 2 * (2 * 10 * 10 * 8)
        assert (
            stats.macs
            == expected
            == attention_macs((10, 16), (10, 16), (10, 16), 2, 8, 8, 16)
        )
        assert not any("not counted" in n for n in stats.notes)


class TestCheckSurgery(builders.SurgeryTestCase):
    def test_surgery_properties_with_an_unrolled_block(self, tmp_path):
        model, layers_ = builders.collapsible(block_model(MLPBlock(6, 12, name="m")))
        self.check_surgery(model, tmp_path, lock=layers_)
