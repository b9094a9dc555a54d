import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.testing import TestCase


def mlp_with_collapsibles():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(12)(inputs)
    h = kc.CollapsiblePReLU(name="first", alpha_regularizer=None)(h)
    h = keras.layers.Dense(12)(h)
    h = kc.CollapsibleActivation("gelu", name="second", alpha_regularizer=None)(h)
    outputs = keras.layers.Dense(2)(h)
    return keras.Model(inputs, outputs)


class LockAt(keras.callbacks.Callback):
    """Locks a layer at a given batch (mid-epoch) or at an epoch's end.

    It holds the model itself rather than going through `self.model` (which
    syncs JAX state on access), so `lock_linear` must do the sync.
    """

    def __init__(self, model, layer_name, batch=None, epoch=None):
        super().__init__()
        self.target, self.layer_name = model, layer_name
        self.batch, self.epoch = batch, epoch
        self.seen_batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen_batches += 1
        if self.batch is not None and self.seen_batches == self.batch:
            kc.lock_linear(self.target, self.layer_name)

    def on_epoch_end(self, epoch, logs=None):
        if self.epoch == epoch:
            kc.lock_linear(self.target, self.layer_name)


class TestListing(TestCase):
    def test_topological_order_nested_and_shared(self):
        inner_in = keras.Input((4,))
        inner_act = kc.CollapsibleActivation("relu6", name="inner")
        inner = keras.Model(inner_in, inner_act(keras.layers.Dense(4)(inner_in)))
        inputs = keras.Input((4,))
        shared = kc.CollapsiblePReLU(name="shared")
        a = shared(keras.layers.Dense(4)(inputs))
        b = inner(a)
        c = shared(keras.layers.Dense(4)(b))
        last = kc.CollapsibleActivation("silu", name="last")(c)
        model = keras.Model(inputs, keras.layers.Add()([last, keras.layers.ReLU()(a)]))
        names = [layer.name for layer in kc.collapsible_layers(model)]
        assert names == ["shared", "inner", "last"]

    def test_sequential(self):
        model = keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(3),
                kc.CollapsiblePReLU(name="p"),
                keras.layers.ReLU(),
                keras.layers.Dense(3),
            ]
        )
        assert [layer.name for layer in kc.collapsible_layers(model)] == ["p"]

    def test_not_a_model(self):
        with pytest.raises(ValueError, match="Expected a keras.Model"):
            kc.collapsible_layers(keras.layers.Dense(3))


class TestLocking(TestCase):
    def test_lock_makes_identity_and_is_linear(self):
        layer = kc.CollapsibleActivation("gelu", alpha_regularizer=None)
        x = self.random_inputs((3, 5), scale=3.0)
        layer(x)
        assert not layer.is_linear and not layer.is_locked
        layer.lock_linear()
        assert layer.is_linear and layer.is_locked
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
        layer.unlock()
        assert not layer.is_locked and layer.is_linear  # alpha stays 1

    def test_alpha_one_without_lock_is_linear(self):
        layer = kc.CollapsiblePReLU()
        layer.build((None, 3))
        layer.set_alpha(1.0)
        assert layer.is_linear and not layer.is_locked

    @pytest.mark.parametrize("where", ["mid_epoch", "epoch_end"])
    def test_lock_during_fit_persists_while_training(self, where):
        model = mlp_with_collapsibles()
        # A strongly nonlinear target pushes alpha away from 1 if it could move.
        x = self.random_inputs((128, 6), scale=2.0)
        y = np.stack([np.abs(x[:, 0]), np.maximum(x[:, 1], 0)], axis=1)
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
        when = {"batch": 3} if where == "mid_epoch" else {"epoch": 0}
        callback = LockAt(model, "second", **when)
        weights_before = model.get_layer("second").get_weights()
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback])
        layer = model.get_layer("second")
        assert layer.is_locked and layer.is_linear
        probe = self.random_inputs((4, 12), seed=3, scale=3.0)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(probe)), probe)
        # The rest kept training after the lock: later layers changed.
        assert layer.get_weights()[1] != weights_before[1]
        out_weights = model.layers[-1].get_weights()[0]
        model2 = mlp_with_collapsibles()
        assert not np.allclose(out_weights, model2.layers[-1].get_weights()[0])
        # And the model computes a function through the identity at that layer.
        hidden = keras.Model(model.input, model.get_layer("second").input)(x[:8])
        after = keras.Model(model.input, model.get_layer("second").output)(x[:8])
        self.assert_close(after, hidden, atol=0, rtol=0)

    def test_lock_unknown_layer(self):
        model = mlp_with_collapsibles()
        with pytest.raises(ValueError, match="Expected a collapsible activation"):
            kc.lock_linear(model, "dense")
        with pytest.raises(ValueError, match="Expected a collapsible activation"):
            kc.lock_linear(model, kc.CollapsiblePReLU())


class TestSerialization(TestCase):
    def test_save_load_without_custom_objects(self, tmp_path):
        model = mlp_with_collapsibles()
        model.get_layer("first").set_alpha(0.3)
        kc.lock_linear(model, "second")
        x = self.random_inputs((5, 6))
        loaded = self.save_and_load(model, tmp_path)
        self.assert_close(loaded(x), model(x), atol=1e-6)
        assert type(loaded.get_layer("first")) is kc.CollapsiblePReLU
        assert loaded.get_layer("second").is_locked
        assert loaded.get_layer("second").activation == "gelu"

    @pytest.mark.parametrize(
        "layer",
        [
            kc.CollapsiblePReLU(shared_axes=[1], alpha_constraint="non_neg"),
            kc.CollapsibleActivation(
                "relu",
                activation_kwargs={"max_value": 6.0},
                alpha_regularizer=kc.LinearityRegularizer(2.0),
            ),
            kc.CollapsibleActivation(
                "leaky_relu",
                activation_kwargs={"negative_slope": 0.1},
                shared_axes=None,
                alpha_regularizer=None,
            ),
        ],
        ids=["prelu", "relu6_blend", "leaky_blend"],
    )
    def test_config_round_trip(self, layer):
        restored = keras.layers.deserialize(keras.layers.serialize(layer))
        assert type(restored) is type(layer)
        assert restored.get_config() == layer.get_config()
        x = self.random_inputs((2, 3, 4), scale=8.0)
        layer(x)
        restored(x)
        restored.set_weights(layer.get_weights())
        self.assert_close(restored(x), layer(x))
