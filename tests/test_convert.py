import functools

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.convert import KINDS
from keras_collapse.convert import make_collapsible
from tests.testing import TestCase

L = keras.layers
ORIGINAL_ACTIVATION_TYPES = (L.ReLU, L.LeakyReLU, L.ELU, L.PReLU, L.Activation)


@keras.saving.register_keras_serializable(package="keras_collapse_tests")
class NumpyNormal(keras.initializers.Initializer):
    """Normal weights drawn by NumPy. Keras' random initializers compile once
    per weight shape on JAX (about 1 s each on 2 CPU cores); nonzero biases
    also make the oracles stricter."""

    rng = np.random.default_rng(0)

    def __init__(self, scale=0.5):
        self.scale = scale

    def __call__(self, shape, dtype=None):
        values = self.rng.standard_normal(shape) * self.scale
        return values.astype(dtype or "float32")

    def get_config(self):
        return {"scale": self.scale}


INIT = NumpyNormal()
Dense = functools.partial(L.Dense, kernel_initializer=INIT, bias_initializer=INIT)
Conv1D = functools.partial(L.Conv1D, kernel_initializer=INIT, bias_initializer=INIT)
Conv2D = functools.partial(L.Conv2D, kernel_initializer=INIT, bias_initializer=INIT)
DepthwiseConv2D = functools.partial(
    L.DepthwiseConv2D, depthwise_initializer=INIT, bias_initializer=INIT
)
SeparableConv2D = functools.partial(
    L.SeparableConv2D,
    depthwise_initializer=INIT,
    pointwise_initializer=INIT,
    bias_initializer=INIT,
)


def chain(activations, features=6, input_dim=5):
    """Dense -> act -> Dense -> act ... -> Dense: every activation sits
    between two linear ops."""
    inputs = keras.Input((input_dim,))
    h = inputs
    for act in activations:
        h = act(Dense(features)(h))
    return keras.Model(inputs, Dense(3)(h))


def conv_chain(make_layer, shape=(9, 9, 3)):
    inputs = keras.Input(shape)
    h = make_layer()(inputs)
    h = Conv2D(4, 1)(h) if len(shape) == 3 else Conv1D(4, 1)(h)
    return keras.Model(inputs, Dense(2)(L.Flatten()(h)))


def snapshot(model):
    return model.get_config(), [w.copy() for w in model.get_weights()]


def assert_unchanged(model, before):
    config, weights = before
    assert model.get_config() == config
    after = model.get_weights()
    assert len(after) == len(weights)
    for a, b in zip(after, weights, strict=True):
        np.testing.assert_array_equal(a, b)


def new_layers(model):
    return {layer.name: layer for layer in kc.collapsible_layers(model)}


# (model builder, the (activation, activation_kwargs) of each collapsible
# layer expected in the converted model, in graph order).
FORMS = {
    "relu_layer": (lambda: chain([L.ReLU()]), [("relu", {})]),
    "relu6_layer": (lambda: chain([L.ReLU(max_value=6.0)]), [("relu6", {})]),
    "relu_slope": (
        lambda: chain([L.ReLU(negative_slope=0.1)]),
        [("leaky_relu", {"negative_slope": 0.1})],
    ),
    "relu_slope_cap": (
        lambda: chain([L.ReLU(max_value=2.0, negative_slope=0.1)]),
        [("relu", {"negative_slope": 0.1, "max_value": 2.0})],
    ),
    "activation_layers": (
        lambda: chain(
            [
                L.Activation(name)
                for name in ["relu", "relu6", "gelu", "swish", "silu", "leaky_relu"]
                + ["elu", "selu", "mish", "softplus", "hard_swish"]
            ]
        ),
        [
            ("relu", {}),
            ("relu6", {}),
            ("gelu", {}),
            ("silu", {}),
            ("silu", {}),
            ("leaky_relu", {}),
            ("elu", {}),
            ("selu", {}),
            ("mish", {}),
            ("softplus", {}),
            ("hard_silu", {}),
        ],
    ),
    "leaky_relu_layer": (
        lambda: chain([L.LeakyReLU(negative_slope=0.15)]),
        [("leaky_relu", {"negative_slope": 0.15})],
    ),
    "elu_layer": (lambda: chain([L.ELU(alpha=0.7)]), [("elu", {"alpha": 0.7})]),
    "raw_ops": (
        lambda: chain(
            [
                keras.ops.relu,
                keras.ops.relu6,
                lambda x: keras.ops.gelu(x, approximate=True),
                lambda x: keras.ops.gelu(x, approximate=False),
                keras.ops.silu,
                lambda x: keras.ops.leaky_relu(x, negative_slope=0.1),
                lambda x: keras.ops.elu(x, alpha=0.5),
                keras.ops.selu,
                lambda x: keras.ops.celu(x, alpha=0.6),
                keras.ops.softplus,
                keras.activations.gelu,
                lambda x: keras.activations.relu(x, max_value=6.0),
                lambda x: keras.activations.relu(x, negative_slope=0.05),
            ]
        ),
        [
            ("relu", {}),
            ("relu6", {}),
            ("gelu", {"approximate": True}),
            ("gelu", {"approximate": False}),
            ("silu", {}),
            ("leaky_relu", {"negative_slope": 0.1}),
            ("elu", {"alpha": 0.5}),
            ("selu", {}),
            ("celu", {"alpha": 0.6}),
            ("softplus", {}),
            ("gelu", {"approximate": False}),
            ("relu6", {}),
            ("leaky_relu", {"negative_slope": 0.05}),
        ],
    ),
    "fused_dense": (
        lambda: chain(
            [
                lambda x: Dense(6, activation="relu")(x),
                lambda x: Dense(6, activation="gelu")(x),
                lambda x: Dense(6, activation="relu6")(x),
            ]
        ),
        [("relu", {}), ("gelu", {}), ("relu6", {})],
    ),
    "fused_conv1d": (
        lambda: conv_chain(lambda: Conv1D(3, 3, activation="silu"), shape=(9, 2)),
        [("silu", {})],
    ),
    "fused_conv2d": (
        lambda: conv_chain(lambda: Conv2D(3, 3, strides=2, activation="relu")),
        [("relu", {})],
    ),
    "fused_depthwise": (
        lambda: conv_chain(
            lambda: DepthwiseConv2D(3, padding="same", activation="relu6")
        ),
        [("relu6", {})],
    ),
    "fused_separable": (
        lambda: conv_chain(lambda: SeparableConv2D(5, 3, activation="elu")),
        [("elu", {})],
    ),
}


class TestActivationForms(TestCase):
    @pytest.mark.parametrize("form", sorted(FORMS))
    def test_same_outputs_and_layers(self, form):
        build, expected = FORMS[form]
        model = build()
        before = snapshot(model)
        new = make_collapsible(model)
        assert_unchanged(model, before)
        found = [
            (layer.activation, layer.activation_kwargs)
            for layer in kc.collapsible_layers(new)
        ]
        assert found == expected
        # Every activation was replaced, none left behind: no activation
        # layer, no fused activation, no raw operation.
        assert not any(isinstance(x, ORIGINAL_ACTIVATION_TYPES) for x in new.layers)
        for x in new.layers:
            if callable(getattr(x, "activation", None)):
                assert x.activation is keras.activations.linear, x.name
        assert all(isinstance(op, L.Layer) for op in new.operations)
        for layer in kc.collapsible_layers(new):
            assert np.all(layer.alpha_numpy() == 0.0) and not layer.is_locked
        # Scale 3 reaches the kinks (0, relu6's cap at 6) of the activations.
        x = self.random_inputs((4, *model.input_shape[1:]), scale=3.0)
        self.assert_close(new(x), model(x), atol=1e-6, rtol=1e-5)

    def test_plain_relu_becomes_collapsible_prelu(self):
        model = chain([L.ReLU(name="a"), L.Activation("relu", name="b"), L.ReLU(6.0)])
        new = make_collapsible(model)
        kinds = [type(layer) for layer in kc.collapsible_layers(new)]
        assert kinds == [
            kc.CollapsiblePReLU,
            kc.CollapsiblePReLU,
            kc.CollapsibleActivation,
        ]
        assert {"a", "b"} <= set(new_layers(new))  # named after what they replace

    def test_layers_are_new_and_independent(self):
        model = chain([L.ReLU()])
        new = make_collapsible(model)
        assert new is not model
        assert not {id(x) for x in new.layers} & {id(x) for x in model.layers}
        before = snapshot(model)
        new.set_weights([w + 1.0 for w in new.get_weights()])
        assert_unchanged(model, before)


class TestFusedSplit(TestCase):
    def test_pre_activation_is_the_linear_op(self):
        inputs = keras.Input((5,))
        h = Dense(7, activation="gelu", name="fc")(inputs)
        model = keras.Model(inputs, Dense(2)(h))
        new = make_collapsible(model)
        fc = new.get_layer("fc")
        assert type(fc) is L.Dense and fc.activation is keras.activations.linear
        assert new.get_layer("fc_gelu").activation == "gelu"
        assert model.get_layer("fc").activation is keras.activations.gelu
        x = self.random_inputs((3, 5))
        kernel, bias = model.get_layer("fc").get_weights()
        pre = keras.Model(new.input, fc.output)(x)
        self.assert_close(pre, x @ kernel + bias, atol=1e-5, rtol=1e-5)
        self.assert_close(new(x), model(x))

    def test_unregistered_custom_objects(self):
        class Unregistered(keras.initializers.Initializer):
            def __call__(self, shape, dtype=None):
                return np.full(shape, 0.3, dtype or "float32")

        class MaxNorm(keras.constraints.MaxNorm):
            pass

        inputs = keras.Input((5,))
        fc = L.Dense(
            4,
            activation="relu",
            bias_initializer=Unregistered(),
            kernel_constraint=MaxNorm(2.0),
            kernel_regularizer="l2",
            name="fc",
        )
        model = keras.Model(inputs, Dense(2)(fc(inputs)))
        new = make_collapsible(model)
        linear = new.get_layer("fc")
        assert linear.activation is keras.activations.linear
        assert isinstance(linear.kernel_constraint, MaxNorm)
        assert isinstance(linear.kernel_regularizer, keras.regularizers.L2)
        x = self.random_inputs((3, 5), scale=2.0)
        self.assert_close(new(x), model(x))

    def test_softmax_head_is_not_split(self):
        inputs = keras.Input((5,))
        h = Dense(6, activation="relu")(inputs)
        model = keras.Model(inputs, Dense(3, activation="softmax", name="head")(h))
        new = make_collapsible(model)
        assert new.get_layer("head").activation is keras.activations.softmax
        assert len(kc.collapsible_layers(new)) == 1

    def test_split_name_does_not_clash(self):
        inputs = keras.Input((5,))
        h = Dense(6, activation="relu", name="fc")(inputs)
        h = Dense(6, name="fc_relu")(h)
        model = keras.Model(inputs, Dense(2)(L.ReLU()(h)))
        new = make_collapsible(model)
        assert type(new.get_layer("fc_relu")) is L.Dense
        assert "fc_relu_1" in new_layers(new)
        x = self.random_inputs((3, 5))
        self.assert_close(new(x), model(x))

    def test_shared_fused_layer_stays_shared(self):
        inputs = keras.Input((4,))
        shared = Dense(4, activation="relu", name="shared")
        h = shared(shared(inputs))
        model = keras.Model(inputs, Dense(2)(h))
        new = make_collapsible(model)
        assert list(new_layers(new)) == ["shared_relu"]
        assert len(new.get_layer("shared").weights) == 2
        x = self.random_inputs((3, 4), scale=2.0)
        self.assert_close(new(x), model(x))


class TestPReLU(TestCase):
    @pytest.mark.parametrize("shared_axes", [None, [1, 2], [1]])
    def test_alpha_and_shared_axes_copied(self, shared_axes):
        inputs = keras.Input((4, 5, 3))
        h = Conv2D(3, 1)(inputs)
        prelu = L.PReLU(
            shared_axes=shared_axes,
            alpha_initializer=NumpyNormal(scale=0.8),
            name="act",
        )
        model = keras.Model(inputs, Conv2D(2, 1)(prelu(h)))
        new = make_collapsible(model, shared_axes="all")
        layer = new.get_layer("act")
        assert type(layer) is kc.CollapsiblePReLU
        assert layer.shared_axes == shared_axes
        np.testing.assert_array_equal(layer.alpha_numpy(), prelu.get_weights()[0])
        assert not layer.is_locked
        x = self.random_inputs((2, 4, 5, 3), scale=2.0)
        self.assert_close(new(x), model(x), atol=1e-5, rtol=1e-5)


class TestChoosing(TestCase):
    def mixed(self):
        return chain(
            [
                L.ReLU(name="r"),
                L.ReLU(max_value=6.0, name="r6"),
                L.Activation("gelu", name="g"),
                L.Activation("swish", name="s"),
                L.PReLU(name="p"),
            ]
        )

    @pytest.mark.parametrize(
        "activations, expected",
        [
            ("relu", {"r"}),
            (("relu6",), {"r6"}),
            (["relu", "gelu"], {"r", "g"}),
            ("swish", {"s"}),
            ("prelu", {"p"}),
            (["sigmoid"], set()),
        ],
    )
    def test_by_kind(self, activations, expected):
        model = self.mixed()
        new = make_collapsible(model, activations=activations)
        assert set(new_layers(new)) == expected
        x = self.random_inputs((3, 5), scale=3.0)
        self.assert_close(new(x), model(x))

    def test_by_name_predicate_and_both(self):
        model = self.mixed()
        assert set(new_layers(make_collapsible(model, layer_names=["g", "r"]))) == {
            "g",
            "r",
        }
        assert set(new_layers(make_collapsible(model, layer_names="p"))) == {"p"}
        only_layers = make_collapsible(model, predicate=lambda x: x.name < "r6")
        assert set(new_layers(only_layers)) == {"g", "p", "r"}
        both = make_collapsible(model, activations="relu6", layer_names=["r", "r6"])
        assert set(new_layers(both)) == {"r6"}

    def test_predicate_sees_fused_layer_and_raw_op(self):
        inputs = keras.Input((5,))
        h = Dense(6, activation="relu", name="fc")(inputs)
        h = keras.ops.gelu(Dense(6)(h))
        model = keras.Model(inputs, Dense(2)(h))
        seen = []
        make_collapsible(model, predicate=lambda x: seen.append(x) or False)
        assert seen[0] is model.get_layer("fc")
        assert type(seen[1]).__name__ == "Gelu"

    def test_default_skips_gates_and_heads(self):
        inputs = keras.Input((6, 6, 3))
        h = Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
        # Squeeze-and-excitation: relu between two linear ops, sigmoid gate.
        s = L.GlobalAveragePooling2D()(h)
        s = Dense(4, activation="relu", name="se_reduce")(s)
        s = Dense(8, activation="sigmoid", name="se_expand")(s)
        # c1's relu feeds the SE Multiply too: the scale between the two convs
        # depends on the input, so they could not merge anyway.
        h = L.Multiply()([h, L.Reshape((1, 1, 8))(s)])
        h = Conv2D(8, 1, activation="relu", name="c2")(h)
        # A gated unit: gelu(a) * b.
        a = L.Activation("gelu", name="gate_gelu")(Conv2D(8, 1)(h))
        h = L.Multiply()([a, Conv2D(8, 1)(h)])
        # A hard-sigmoid gate built from ops: relu6(x + 3) / 6.
        hs = L.ReLU(6.0, name="hard_sigmoid_relu6")(h + 3.0) * (1.0 / 6.0)
        h = L.Multiply()([h, hs])
        f = L.Flatten()(h)
        head = L.Activation("tanh", name="tanh_head")(Dense(2)(f))
        relu_head = L.ReLU(name="relu_head")(Dense(2)(f))
        model = keras.Model(inputs, [head, relu_head])
        new = make_collapsible(model)
        assert set(new_layers(new)) == {"se_reduce_relu", "c2_relu"}
        assert new.get_layer("se_expand").activation is keras.activations.sigmoid
        x = self.random_inputs((2, 6, 6, 3), scale=2.0)
        for got, want in zip(new(x), model(x), strict=True):
            self.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # Asked for explicitly, a gate or a head is converted.
        explicit = make_collapsible(model, activations=["sigmoid", "tanh"])
        assert set(new_layers(explicit)) == {"se_expand_sigmoid", "tanh_head"}

    def test_kinds_that_match_nothing_warn(self):
        model = chain([L.ReLU(name="r"), L.Activation("relu", name="a")])
        with pytest.warns(UserWarning, match=r"activations=\['gelu'\].*\['relu'\]"):
            new = make_collapsible(model, activations=["gelu"])
        assert new_layers(new) == {}

    def test_thresholded_relu_left_with_a_warning(self):
        model = chain([L.ReLU(threshold=0.5, name="t"), L.ReLU(name="r")])
        with pytest.warns(UserWarning, match=r"\['t'\].*threshold"):
            new = make_collapsible(model)
        assert type(new.get_layer("t")) is L.ReLU
        assert set(new_layers(new)) == {"r"}
        x = self.random_inputs((3, 5), scale=3.0)
        self.assert_close(new(x), model(x))
        with pytest.raises(ValueError, match=r"\['t'\]"):
            make_collapsible(model, layer_names=["t"])

    def test_shared_activation_layer(self):
        inputs = keras.Input((4,))
        relu = L.ReLU(name="shared_relu")
        h = relu(Dense(4)(relu(Dense(4)(inputs))))
        model = keras.Model(inputs, Dense(2)(h))
        new = make_collapsible(model)
        assert list(new_layers(new)) == ["shared_relu"]
        x = self.random_inputs((3, 4), scale=2.0)
        self.assert_close(new(x), model(x))
        # Chosen at one call (the other one is an output): left at both.
        model = keras.Model(inputs, [Dense(2)(h), h])
        with pytest.warns(UserWarning, match="several places"):
            assert new_layers(make_collapsible(model)) == {}

    def test_options_reach_the_layers(self):
        model = chain([L.ReLU(), L.Activation("gelu")])
        assert make_collapsible(model).losses == []
        new = make_collapsible(model, alpha_regularizer="linearity", shared_axes=None)
        for layer in kc.collapsible_layers(new):
            assert isinstance(layer.alpha_regularizer, kc.LinearityRegularizer)
            assert tuple(layer.alpha.shape) == (6,)
        x = self.random_inputs((2, 5))
        new(x)
        assert len(new.losses) == 2
        # alpha = 0: each adds 0.2 * sum((1 - 0)^2) over 6 alphas.
        self.assert_close(sum(new.losses), 2 * 0.2 * 6)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"activations": ["relu", "relu7"]}, "relu6"),
            ({"activations": "softmax"}, "softmax"),
            ({"activations": 3}, "list of strings"),
            ({"layer_names": ["r", "nope"]}, r"do not exist: \['nope'\]"),
            ({"layer_names": ["dense"]}, r"collapsible elementwise.*\['dense'\]"),
            ({"predicate": "relu"}, "callable"),
        ],
    )
    def test_bad_selectors(self, kwargs, message):
        model = chain([L.ReLU(name="r")])
        with pytest.raises(ValueError, match=message):
            make_collapsible(model, **kwargs)

    def test_known_kinds_all_accepted(self):
        model = chain([L.ReLU()])
        for kind in KINDS:
            make_collapsible(model, activations=kind)


class TestModels(TestCase):
    def test_nested_model(self):
        inner_in = keras.Input((6,))
        inner_out = Dense(6)(L.Activation("gelu")(Dense(6)(inner_in)))
        inner = keras.Model(inner_in, L.ReLU()(inner_out), name="inner")
        inputs = keras.Input((5,))
        h = inner(Dense(6, activation="relu")(inputs))
        model = keras.Model(inputs, Dense(2)(h))
        before = snapshot(model)
        new = make_collapsible(model)
        assert_unchanged(model, before)
        assert len(kc.collapsible_layers(new)) == 3
        x = self.random_inputs((3, 5), scale=2.0)
        self.assert_close(new(x), model(x))

    def test_sequential(self):
        model = keras.Sequential(
            [
                keras.Input((8, 8, 2)),
                Conv2D(4, 3, activation="relu"),
                L.Flatten(),
                Dense(5),
                L.LeakyReLU(),
                Dense(2),
            ]
        )
        new = make_collapsible(model)
        assert len(kc.collapsible_layers(new)) == 2
        x = self.random_inputs((2, 8, 8, 2), scale=2.0)
        self.assert_close(new(x), model(x))

    def test_bad_models(self):
        with pytest.raises(ValueError, match="Expected a keras.Model"):
            make_collapsible(L.ReLU())
        with pytest.raises(ValueError, match="no known input shape"):
            make_collapsible(keras.Sequential([Dense(3), L.ReLU()]))

        class Subclassed(keras.Model):
            def __init__(self):
                super().__init__()
                self.dense = Dense(3)

            def call(self, x):
                return keras.ops.relu(self.dense(x))

        subclassed = Subclassed()
        subclassed(np.zeros((1, 3), "float32"))
        with pytest.raises(ValueError, match="subclassed"):
            make_collapsible(subclassed)

    def test_save_load_round_trip(self, tmp_path):
        # Stock initializers, so that the file loads without custom objects;
        # "zeros" then random weights, to skip JAX's per-shape compilation.
        zeros = {"kernel_initializer": "zeros"}
        inputs = keras.Input((6, 6, 2))
        h = L.Conv2D(4, 3, activation="relu", name="conv1", **zeros)(inputs)
        h = L.PReLU(shared_axes=[1, 2], name="prelu")(L.Conv2D(4, 1, **zeros)(h))
        h = keras.ops.gelu(L.Conv2D(4, 1, **zeros)(h), approximate=False)
        h = L.ReLU(6.0, name="relu6")(L.Dense(3, **zeros)(L.Flatten()(h)))
        model = keras.Model(inputs, L.Dense(2, **zeros)(h))
        rng = self.rng(1)
        model.set_weights([rng.normal(size=w.shape) for w in model.get_weights()])
        new = make_collapsible(model, alpha_regularizer="linearity")
        loaded = self.save_and_load(new, tmp_path)
        assert [type(x) for x in loaded.layers] == [type(x) for x in new.layers]
        assert new_layers(loaded).keys() == new_layers(new).keys()
        for name, layer in new_layers(loaded).items():
            assert layer.get_config() == new.get_layer(name).get_config()
        np.testing.assert_array_equal(
            loaded.get_layer("prelu").alpha_numpy(),
            model.get_layer("prelu").get_weights()[0],
        )
        x = self.random_inputs((2, 6, 6, 2), scale=2.0)
        self.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)

    def test_locked_layer_is_identity(self):
        model = chain([L.ReLU(name="a"), L.Activation("relu", name="b")])
        new = make_collapsible(model)
        (w1, b1), (w2, b2), (w3, b3) = [
            layer.get_weights() for layer in model.layers if type(layer) is L.Dense
        ]
        x = self.random_inputs((6, 5), scale=2.0).astype("float64")

        def oracle(act_a):
            h = act_a(x @ w1 + b1)
            return np.maximum(h @ w2 + b2, 0.0) @ w3 + b3

        relu = lambda h: np.maximum(h, 0.0)  # noqa: E731
        self.assert_close(new(x), oracle(relu), atol=1e-5, rtol=1e-5)
        assert kc.lock_linear(new, ["a"]) == [new.get_layer("a")]
        locked = keras.ops.convert_to_numpy(new(x))
        self.assert_close(locked, oracle(lambda h: h), atol=1e-5, rtol=1e-5)
        assert not np.allclose(locked, oracle(relu), atol=1e-3)


def features_and_outputs(model, x):
    """The classifier's input and the model's output, in one compiled call."""
    probe = keras.Model(
        model.input, [model.get_layer("predictions").input, model.output]
    )
    return probe.predict_on_batch(x)


# Keras' random initializers compile once per weight shape on JAX: building
# these takes about a minute there.
APPLICATIONS = {
    "mobilenet_v2": (
        lambda: keras.applications.MobileNetV2(
            weights=None,
            input_shape=(32, 32, 3),
            alpha=0.35,
            include_top=True,
            classes=10,
        ),
        35,
    ),
    "resnet50": (
        lambda: keras.applications.ResNet50(
            weights=None, input_shape=(32, 32, 3), classes=10
        ),
        49,
    ),
}


@pytest.mark.large
class TestApplications(TestCase):
    @pytest.mark.parametrize("name", sorted(APPLICATIONS))
    def test_application(self, name):
        build, n_relu = APPLICATIONS[name]
        model = build()
        relus = [
            x
            for x in model.layers
            if type(x) is L.ReLU
            or (type(x) is L.Activation and x.activation is keras.activations.relu)
        ]
        assert len(relus) == n_relu
        before = snapshot(model)
        new = make_collapsible(model)
        assert_unchanged(model, before)
        assert sorted(new_layers(new)) == sorted(x.name for x in relus)
        x = self.random_inputs((2, 32, 32, 3))
        for got, want in zip(
            features_and_outputs(new, x), features_and_outputs(model, x), strict=True
        ):
            scale = np.abs(want).max()
            self.assert_close(got, want, atol=1e-5 * scale, rtol=1e-5)


# --------------------------------------------- issue 23: what a trace loses
class TrainScaled(L.Layer):
    """Dense -> ReLU -> Dense + residual, the branch halved in training."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = L.Dense(8, activation="relu", name="fc1")
        self.fc2 = L.Dense(6, name="fc2")

    def call(self, x, training=None):
        h = self.fc2(self.fc1(x))
        if training:
            h = h * 0.5
        return x + h


class DropPath(L.Layer):
    """Stochastic depth: the branch of a whole sample dropped in training."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = L.Dense(8, activation="relu", name="fc1")
        self.fc2 = L.Dense(6, name="fc2")
        self.seed = keras.random.SeedGenerator(0)

    def call(self, x, training=None):
        h = self.fc2(self.fc1(x))
        if training:
            keep = keras.random.uniform((keras.ops.shape(x)[0], 1), seed=self.seed)
            h = h * keras.ops.cast(keep < 0.5, h.dtype) / 0.5
        return x + h


class PinnedBN(L.Layer):
    """Dense -> BatchNorm pinned to inference -> ReLU -> Dense + residual."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = L.Dense(8, name="fc1")
        self.bn = L.BatchNormalization(name="bn")
        self.act = L.ReLU(name="act")
        self.fc2 = L.Dense(6, name="fc2")

    def call(self, x, training=None):
        return x + self.fc2(self.act(self.bn(self.fc1(x), training=False)))


class PassesTraining(PinnedBN):
    """The same block with the mode passed on: traced as before."""

    def call(self, x, training=None):
        return x + self.fc2(self.act(self.bn(self.fc1(x), training=training)))


def block_in_model(block):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = block(L.Dense(6, name="stem")(inputs))
    return keras.Model(inputs, L.Dense(3, name="head")(h))


class TestTrainingBehaviour(TestCase):
    @pytest.mark.parametrize("block", [TrainScaled, DropPath, PinnedBN])
    def test_mode_dependent_block_is_kept_whole_with_a_warning(self, block):
        model = block_in_model(block(name="block"))
        with pytest.warns(UserWarning, match="block.*training") as caught:
            new = make_collapsible(model)
        assert any("Kept 1 composite layer(s) whole" in str(w.message) for w in caught)
        assert isinstance(new.get_layer("block"), block)
        assert kc.collapsible_layers(new) == []
        x = self.random_inputs((64, 6), scale=3.0)
        self.assert_close(new(x, training=False), model(x, training=False), 1e-5)
        if block is TrainScaled:  # the training branch is kept
            self.assert_close(new(x, training=True), model(x, training=True), 1e-5)
        if block is DropPath:  # still random in training, not in inference
            a, b = new(x, training=True), new(x, training=False)
            assert not np.allclose(*map(keras.ops.convert_to_numpy, (a, b)))
        if block is PinnedBN:  # the pinned BN keeps its statistics in training
            bn = new.get_layer("block").bn
            new(x, training=True)
            self.assert_close(bn.moving_mean, np.zeros(8))

    def test_surgery_reports_it_and_keeps_the_training_branch(self):
        model = block_in_model(TrainScaled(name="block"))
        small, report = kc.surgery(model, return_report=True)
        (entry,) = [e for e in report.skipped if e.kind == "opaque"]
        assert entry.layers == ("block",) and "training=True" in entry.detail
        x = self.random_inputs((4, 6))
        self.assert_close(small(x, training=True), model(x, training=True), 1e-5)

    def test_a_block_that_passes_the_mode_on_is_still_unrolled(self):
        model = block_in_model(PassesTraining(name="block"))
        new = make_collapsible(model)
        assert [a.name for a in kc.collapsible_layers(new)] == ["block_act"]
        # Its BatchNorm follows the model's mode, as in the block itself.
        x = self.random_inputs((16, 6), scale=3.0)
        self.assert_close(new(x, training=True), model(x, training=True), 1e-5)

    def test_input_model_unchanged(self):
        model = block_in_model(PinnedBN(name="block"))
        before = snapshot(model)
        with pytest.warns(UserWarning):
            make_collapsible(model)
        assert_unchanged(model, before)


class TestLambda(TestCase):
    def lambda_model(self):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        h = L.Dense(8, activation="relu", name="fc1")(inputs)
        h = L.Lambda(lambda t, k: t * k, arguments={"k": 2.0}, name="double")(h)
        h = L.Lambda(lambda t: t[:, :6], output_shape=(6,), name="cut")(h)
        return keras.Model(inputs, L.Dense(2, name="out")(h))

    def test_make_collapsible_keeps_the_same_function(self):
        model = self.lambda_model()
        new = make_collapsible(model)
        for name in ("double", "cut"):
            assert new.get_layer(name) is not model.get_layer(name)
            assert new.get_layer(name).function is model.get_layer(name).function
        assert new.get_layer("double").arguments == {"k": 2.0}
        assert [a.name for a in kc.collapsible_layers(new)] == ["fc1_relu"]
        x = self.random_inputs((3, 4))
        self.assert_close(new(x), model(x), atol=1e-6)

    def test_surgery_in_memory_and_from_a_file_loaded_unsafe(self, tmp_path):
        model = self.lambda_model()
        x = self.random_inputs((3, 4))
        small = kc.surgery(model)
        assert small.get_layer("double").function is model.get_layer("double").function
        self.assert_close(small(x), model(x), atol=1e-5)
        path = str(tmp_path / "lambda.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=False)
        self.assert_close(kc.surgery(loaded)(x), model(x), atol=1e-5)
