"""A surgery result keeps the model's outside: input and output names, output
dtypes, and loads with plain Keras in a process that never imports
keras_collapse."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.testing import TestCase


def locked(x, **kwargs):
    layer = kc.CollapsiblePReLU(**kwargs)
    y = layer(x)
    layer.lock_linear()
    return y


class TestOutputNames(TestCase):
    def test_identity_at_an_output_keeps_its_name(self):
        x = keras.Input((8,), name="features")
        h = keras.layers.Dense(4, name="fc")(x)
        logits = keras.layers.Dropout(0.1, name="logits")(h)
        aux = keras.layers.Activation("linear", name="aux")(keras.layers.Dense(2)(x))
        model = keras.Model(x, {"logits": logits, "aux": aux})
        small = kc.surgery(model)
        assert small.output_names == model.output_names
        assert [t.name for t in small.inputs] == ["features"]
        assert not any(isinstance(la, keras.layers.Dropout) for la in small.layers), (
            "the identity is still removed"
        )
        # compile(loss={name: ...}) and fit work on the result as on the model.
        small.compile("sgd", loss={"logits": "mse", "aux": "mse"})
        data = self.random_inputs((8, 8))
        small.fit(
            data, {"logits": np.zeros((8, 4)), "aux": np.zeros((8, 2))}, verbose=0
        )

    def test_merged_output_keeps_its_name(self):
        x = keras.Input((6,))
        h = keras.layers.Dense(5, name="hidden")(x)
        y = keras.layers.Dense(3, name="scores")(locked(h))
        model = keras.Model(x, y)
        small, report = kc.surgery(model, return_report=True)
        assert report.count("merge") == 1
        assert small.output_names == ["scores"]
        assert len([la for la in small.layers if la.weights]) == 1

    def test_output_read_elsewhere_gets_a_named_guard(self):
        # The Dense feeds an output through an identity *and* another
        # layer: it cannot take the output's name, a linear Activation does.
        x = keras.Input((6,))
        h = keras.layers.Dense(5, name="shared")(x)
        a = keras.layers.Identity(name="first")(h)
        b = keras.layers.Dense(2, name="second")(h)
        model = keras.Model(x, [a, b])
        small = kc.surgery(model)
        assert small.output_names == ["first", "second"]
        data = self.random_inputs((3, 6))
        for want, got in zip(model(data), small(data)):
            self.assert_close(got, want)

    def test_nested_model_at_the_output_keeps_its_name(self):
        inner_in = keras.Input((4,))
        inner = keras.Model(
            inner_in, keras.layers.Dense(2)(inner_in), name="head_model"
        )
        x = keras.Input((4,))
        model = keras.Model(x, inner(keras.layers.Dense(4)(x)))
        small = kc.surgery(model)
        assert small.output_names == model.output_names == ["head_model"]


class TestDuplicateNames(TestCase):
    @staticmethod
    def block():
        i = keras.Input((8, 8, 4))
        h = keras.layers.Conv2D(4, 3, padding="same", name="c")(i)
        return keras.Model(i, keras.layers.ReLU(name="r")(h))

    def test_two_nested_models_with_the_same_layer_names(self, tmp_path):
        x = keras.Input((8, 8, 4))
        model = keras.Model(x, self.block()(self.block()(x)))
        data = self.random_inputs((2, 8, 8, 4))
        for build in (kc.surgery, kc.make_collapsible):
            rebuilt = build(model)
            names = [la.name for la in rebuilt.layers]
            assert len(names) == len(set(names))
            assert "c" in names
            self.assert_close(rebuilt(data), model(data), atol=1e-6)
            loaded = self.save_and_load(rebuilt, tmp_path)
            self.assert_close(loaded(data), model(data), atol=1e-6)


class TestLoadsWithPlainKeras(TestCase):
    """Each result is saved here and loaded in one fresh subprocess, which
    asserts that keras_collapse was never imported."""

    def models(self):
        rng = np.random.default_rng(0)
        # A MobileNetV2-style block with both activations linear: the merge
        # needs a border-aware bias map.
        x = keras.Input((8, 8, 4))
        h = keras.layers.Conv2D(12, 1, bias_initializer="ones")(x)
        h = locked(h)
        h = keras.layers.DepthwiseConv2D(3, padding="same")(h)
        h = locked(h)
        h = keras.layers.Conv2D(4, 1)(h)
        mobilenet = keras.Model(x, keras.layers.Add()([x, h]))
        for layer in mobilenet.layers:
            if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
                layer.set_weights(
                    [rng.normal(0, 0.3, w.shape) for w in layer.get_weights()]
                )
        # A GELU blend at alpha 0.42, and per-channel alphas.
        x = keras.Input((6,))
        blend = kc.CollapsibleActivation("gelu")
        per_channel = kc.CollapsibleActivation("silu", shared_axes=None)
        h = per_channel(blend(keras.layers.Dense(5)(x)))
        partial = keras.Model(x, keras.layers.Dense(3)(h))
        blend.set_alpha(0.42)
        per_channel.set_alpha(np.linspace(0.0, 1.0, 5))
        # A per-channel PReLU and a collapsible PReLU at alpha 0.3.
        x = keras.Input((6, 6, 3))
        h = keras.layers.PReLU(shared_axes=[1, 2])(keras.layers.Conv2D(4, 3)(x))
        prelu = kc.CollapsiblePReLU()
        h = prelu(keras.layers.Conv2D(4, 1)(h))
        prelus = keras.Model(x, h)
        prelu.set_alpha(0.3)
        return {"mobilenet": mobilenet, "partial": partial, "prelus": prelus}

    def test_every_result_loads_without_keras_collapse(self, tmp_path):
        cases = []
        for name, model in self.models().items():
            small, report = kc.surgery(model, return_report=True)
            if name == "mobilenet":
                assert report.count("merge") >= 1
                assert any(type(la) is keras.layers.Rescaling for la in small.layers)
            assert not any(
                type(la).__module__.startswith("keras_collapse") for la in small.layers
            )
            data = self.random_inputs((3,) + tuple(model.input_shape[1:]), scale=2.0)
            cases.append((small, data, keras.ops.convert_to_numpy(model(data))))
        self.assert_loads_without_keras_collapse(tmp_path, cases)


class TestUnclonableLayer(TestCase):
    def test_a_layer_its_config_cannot_rebuild_is_refused(self):
        class Lossy(keras.layers.Layer):
            def __init__(self, factor, **kwargs):
                super().__init__(**kwargs)
                self.factor = factor

            def call(self, x):
                return x * self.factor

            def get_config(self):  # forgets `factor`
                return {"name": self.name}

        x = keras.Input((4,))
        model = keras.Model(x, keras.layers.Dense(2)(Lossy(2.0)(x)))
        with pytest.raises(ValueError, match="cannot be re-created from its config"):
            kc.surgery(model)

    def test_an_init_without_layer_arguments_is_cloned(self):
        class Scale(keras.layers.Layer):
            def __init__(self, factor):  # no **kwargs: `name` is refused
                super().__init__()
                self.factor = factor

            def call(self, x):
                return x * self.factor

        x = keras.Input((4,))
        original = Scale(2.0)
        model = keras.Model(x, keras.layers.Dense(2)(original(x)))
        small = kc.surgery(model)
        (scale,) = [layer for layer in small.layers if isinstance(layer, Scale)]
        assert scale is not original and scale.name == original.name
        assert scale.factor == 2.0
        inputs = self.random_inputs((3, 4))
        self.assert_close(small(inputs), model(inputs), atol=1e-6)
