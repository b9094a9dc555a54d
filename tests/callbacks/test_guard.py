"""The guard's direction, as Keras' MonitorCallback finds it."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.callbacks.guard import Guard
from tests.testing import TestCase

layers = keras.layers


def binary_model(metrics):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = inputs
    for i in range(2):
        h = layers.Dense(8)(h)
        h = layers.BatchNormalization()(h)
        h = kc.CollapsiblePReLU(name=f"act{i}")(h)
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid")(h))
    model.compile("adam", "binary_crossentropy", metrics=metrics)
    return model


def binary_data(n=64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("float32")


class Inject(keras.callbacks.Callback):
    """Writes `logs[key]`: `good` until the callback has linearized
    something, `bad` after."""

    def __init__(self, callback, key, good, bad):
        super().__init__()
        self.callback, self.key, self.good, self.bad = callback, key, good, bad

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.bad if self.callback.linearized else self.good


def fit_with(model, callback, injected, epochs=3):
    x, y = binary_data()
    model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=epochs,
        callbacks=[injected, callback],
        verbose=0,
    )


class TestMode(TestCase):
    def test_an_auc_drop_is_rolled_back(self):
        model = binary_model([keras.metrics.AUC(name="auc")])
        tlc = kc.TLCCallback(
            ranking="random", monitor="val_auc", interval=1, patience=1, verbose=0
        )
        fit_with(model, tlc, Inject(tlc, "val_auc", 0.9, 0.5))
        actions = [e["action"] for e in tlc.events]
        assert actions[:2] == ["linearized", "rolled back"], actions
        assert tlc.guard.maximize is True

    def test_an_auc_rise_is_accepted(self):
        model = binary_model([keras.metrics.AUC(name="auc")])
        tlc = kc.TLCCallback(
            ranking="random",
            monitor="val_auc",
            interval=1,
            max_layers=1,
            tolerance=1.0,
            verbose=0,
        )
        fit_with(model, tlc, Inject(tlc, "val_auc", 0.5, 0.9))
        assert [e["action"] for e in tlc.events][:2] == ["linearized", "accepted"]

    def test_a_loss_is_minimized(self):
        model = binary_model(["accuracy"])
        tlc = kc.TLCCallback(
            ranking="random", monitor="val_loss", interval=1, patience=1, verbose=0
        )
        fit_with(model, tlc, Inject(tlc, "val_loss", 0.2, 0.2 * 1.5))
        assert tlc.guard.maximize is False
        assert [e["action"] for e in tlc.events][:2] == ["linearized", "rolled back"]

    def test_a_metric_without_a_direction_asks_for_mode(self):
        def agreement(y_true, y_pred):
            return keras.ops.mean(keras.ops.abs(y_true - y_pred))

        model = binary_model([agreement])
        tlc = kc.TLCCallback(
            ranking="random", monitor="val_agreement", interval=1, verbose=0
        )
        with pytest.raises(ValueError, match="mode='max'"):
            fit_with(model, tlc, Inject(tlc, "val_agreement", 0.5, 0.5))
        assert tlc.linearized == []  # raised before any change

    def test_explicit_mode_wins(self):
        guard = Guard("val_auc", mode="min")
        guard.resolve("val_auc", None)
        assert guard.maximize is False and guard.within(0.1, 0.2)

    @pytest.mark.parametrize("mode", ["up", None, 1])
    def test_bad_mode(self, mode):
        with pytest.raises(ValueError, match="mode"):
            kc.TLCCallback(mode=mode)
