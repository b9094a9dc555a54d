"""EASIERCallback and what the shared engine adds: entropy ranking,
gradual linearization, data-driven TLC, custom scorers, progress."""

import os

import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.callbacks.test_tlc import fit
from tests.callbacks.test_tlc import planted_model
from tests.callbacks.test_tlc import teacher_data
from tests.scores.test_batchnorm import set_bn
from tests.testing import TestCase

layers = keras.layers
# name: (beta, gamma) of the BN before it. 'alive' is always ON, 'split'
# half always ON, half always OFF (entropy 0 both), 'mostly' ON most of the
# time (low entropy), the others coin tosses.
PLANTS = {
    "alive": (4.0, 0.5),
    "toss1": (0.0, 1.0),
    "mostly": (0.8, 1.0),
    "toss2": (0.0, 1.0),
    "split": ([4.0, -4.0] * 4, 0.5),
}


def entropy_model(seed=0):
    """Dense -> BN -> activation blocks with planted BN gamma/beta and moving
    statistics re-estimated on the inputs (so each pre-activation is about
    N(beta, gamma^2)); frozen (learning rate 0, BN momentum 1) so that only
    the callback changes it."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = inputs
    for name, (beta, gamma) in PLANTS.items():
        h = layers.Dense(8, name=f"{name}_dense")(h)
        bn = layers.BatchNormalization(momentum=1.0, name=f"{name}_bn")
        h = kc.CollapsiblePReLU(name=name)(bn(h))
        set_bn(bn, np.full(8, gamma), np.broadcast_to(beta, (8,)))
    model = keras.Model(inputs, layers.Dense(2, name="head")(h))
    kc.recalibrate_batchnorm(model, inputs_and_targets(None)[0], in_place=True)
    model.compile(keras.optimizers.SGD(0.0), "mse", metrics=["mae"])
    return model


def inputs_and_targets(model, n=256, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 6)).astype("float32")
    if model is None:
        return x, None
    return x, keras.ops.convert_to_numpy(model.predict(x, verbose=0))


def frozen_easier(x, **kwargs):
    kwargs = {
        "interval": 1,
        "ramp_epochs": 0,
        "recalibrate": False,
        "tolerance": 1.0,
        "verbose": 0,
        **kwargs,
    }
    return kc.EASIERCallback(x, **kwargs)


class TestEntropyChoices(TestCase):
    def test_zero_entropy_first_then_lowest(self):
        model = entropy_model()
        x, y = inputs_and_targets(model)
        easier = frozen_easier(x, max_layers=2)
        fit(model, (x, y), [easier], epochs=2)
        picks = [e for e in easier.events if e["action"] == "linearized"]
        assert sorted(picks[0]["layers"]) == ["alive", "split"]
        ranked = dict(picks[0]["ranked"])
        assert ranked["alive"] < 1e-6 and ranked["split"] < 1e-6
        assert 1e-3 < ranked["mostly"] < min(ranked["toss1"], ranked["toss2"])

    def test_never_on_channels_are_zeroed_and_cut(self):
        model = entropy_model()
        x, y = inputs_and_targets(model)
        easier = frozen_easier(x, max_layers=2)
        fit(model, (x, y), [easier], epochs=2)
        gamma = keras.ops.convert_to_numpy(model.get_layer("split_bn").gamma)
        np.testing.assert_array_equal(gamma[1::2], 0.0)  # never ON: zeroed
        assert np.all(gamma[::2] != 0.0)
        alive = keras.ops.convert_to_numpy(model.get_layer("alive_bn").gamma)
        assert np.all(alive != 0.0)  # always ON: passes
        small, report = kc.surgery(model, return_report=True)
        self.assert_close(small(x), model(x), atol=1e-4)
        assert report.after.params < report.before.params

    def test_rollback_restores_weights(self):
        model = entropy_model()
        x, y = inputs_and_targets(model)
        before = [w.copy() for w in model.get_weights()]
        easier = kc.EASIERCallback(
            x,
            validation_data=(x, y),  # the teacher's own outputs: loss 0
            candidates=["toss1"],  # a coin-toss layer: linearizing it hurts
            interval=1,
            ramp_epochs=0,
            recalibrate=False,
            tolerance=0.0,
            patience=1,
            precheck=False,  # the guard's rollback, not the pre-check's refusal
            verbose=0,
        )

        fit(model, (x, y), [easier], epochs=3)
        actions = [e["action"] for e in easier.events]
        assert actions[:2] == ["linearized", "rolled back"]
        assert easier.linearized == [] and easier.kept == ["toss1"]
        assert not model.get_layer("toss1").is_locked
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_logs_and_attributes(self):
        model = entropy_model()
        x, y = inputs_and_targets(model)
        easier = frozen_easier(x, max_layers=2)
        history = fit(model, (x, y), [easier], epochs=2)
        assert history.history["easier_linearized"][-1] == 2.0
        assert history.history["easier_rollbacks"] == [0.0, 0.0]


class TestIntegerData(TestCase):
    def test_uint8_images_are_read_as_predict_reads_them(self):
        # Issue 23: a Conv on uint8 failed inside the statistics and the BN
        # re-estimation, mid-fit.
        rng = np.random.default_rng(1)
        x = rng.integers(0, 8, (64, 6, 6, 1)).astype("uint8")
        y = rng.standard_normal((64, 2)).astype("float32")
        events = []
        for data in (x, x.astype("float32")):
            keras.utils.set_random_seed(0)
            inputs = keras.Input((6, 6, 1))
            h = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
            h = kc.CollapsiblePReLU(name="act")(layers.BatchNormalization()(h))
            h = layers.GlobalAveragePooling2D()(h)
            model = keras.Model(inputs, layers.Dense(2)(h))
            model.compile(keras.optimizers.SGD(0.0), "mse")
            easier = frozen_easier(data, recalibrate=True, precheck=False)
            fit(model, (x, y), [easier], epochs=2)
            events.append([(e["action"], e["layers"]) for e in easier.events])
        assert events[0] == events[1] and events[0]


class TestRamp(TestCase):
    def trainable_model(self):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6,))
        h = layers.BatchNormalization(momentum=0.9)(layers.Dense(8)(inputs))
        h = kc.CollapsiblePReLU(name="act")(h)
        model = keras.Model(inputs, layers.Dense(2)(h))
        model.compile(keras.optimizers.Adam(1e-3), "mse")
        return model

    def test_gradual_then_exactly_linear_and_saved(self, tmp_path):
        model = self.trainable_model()
        x = self.random_inputs((256, 6))
        y = self.random_inputs((256, 2), seed=1)
        seen = []

        class Watch(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                kc.sync_training_state(self.model)
                layer = self.model.get_layer("act")
                seen.append(float(keras.ops.convert_to_numpy(layer.alpha)))

        tlc = kc.TLCCallback(
            data=x, interval=2, ramp_epochs=2, tolerance=1.0, verbose=0
        )
        fit(model, (x, y), [tlc, Watch()], epochs=4)
        assert tlc.linearized == ["act"]
        ramp = seen[8:16]  # epochs 2 and 3 (8 steps each): the ramp
        assert all(0.0 < a < 1.0 for a in ramp[:-1]) and ramp == sorted(ramp)
        layer = model.get_layer("act")
        assert layer.is_locked and np.all(layer.alpha_numpy() == 1.0)
        loaded = self.save_and_load(model, tmp_path)
        assert loaded.get_layer("act").is_locked
        self.assert_close(loaded(x), model(x), atol=1e-6)
        small = kc.surgery(loaded)
        self.assert_close(small(x), model(x), atol=1e-4)

    def test_ramp_longer_than_interval(self):
        with pytest.raises(ValueError, match="ramp_epochs"):
            kc.TLCCallback(interval=1, ramp_epochs=2)


class TestDataDrivenTLC(TestCase):
    def test_scores_activations_without_batchnorm(self):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6,))
        h = layers.Dense(6, bias_initializer=keras.initializers.Constant(20.0))(inputs)
        h = kc.CollapsiblePReLU(name="always_on")(h)  # no BN; after a Dense
        h = kc.CollapsiblePReLU(name="after_add")(layers.Add()([h, inputs]))
        model = keras.Model(inputs, layers.Dense(2)(h))
        model.compile(keras.optimizers.SGD(0.0), "mse")
        x = self.random_inputs((128, 6))
        y = keras.ops.convert_to_numpy(model(x))
        tlc = kc.TLCCallback(
            data=x, interval=1, ramp_epochs=0, tolerance=1.0, max_layers=1, verbose=0
        )
        fit(model, (x, y), [tlc], epochs=2)
        first = tlc.events[0]
        assert first["ranking"] == "statistics" and first["layers"] == ["always_on"]
        assert dict(first["ranked"])["after_add"] > dict(first["ranked"])["always_on"]


class TestEngine(TestCase):
    def test_a_custom_scorer(self):
        model = planted_model()
        data = teacher_data(model)
        seen = {}

        def by_name(context, pairs):
            seen["names"] = [p.activation.name for p in pairs]
            return [(p, 0.0 if p.activation.name == "a4" else 1.0) for p in pairs]

        callback = kc.LinearizationCallback(
            by_name, interval=1, ramp_epochs=0, tolerance=1.0, max_layers=1, verbose=0
        )
        fit(model, data, [callback], epochs=2)
        assert callback.linearized == ["a4"]
        assert sorted(seen["names"]) == sorted(["a0", "split", "a2", "alive", "a4"])
        assert callback.events[0]["ranking"] == "by_name"

    def test_progress_bar_while_measuring(self, capsys):
        model = planted_model()
        data = teacher_data(model)
        tlc = kc.TLCCallback(data, interval=1, max_layers=1, tolerance=1.0)
        fit(model, data, [tlc], epochs=2)
        out = capsys.readouterr().out
        assert "measuring candidates: 5" in out and "5/5" in out

    def test_recalibrates_before_judging_and_at_the_end(self, monkeypatch):
        from keras_collapse.actions.recalibrate import BatchNormRecalibrator

        calls = []
        original = BatchNormRecalibrator.run

        def counting(self, x, **kwargs):
            calls.append(len(x))
            return original(self, x, **kwargs)

        monkeypatch.setattr(BatchNormRecalibrator, "run", counting)
        model = planted_model()
        x, y = teacher_data(model)
        easier = kc.EASIERCallback(x[:100], interval=1, tolerance=1.0, verbose=0)
        fit(model, (x, y), [easier], epochs=3)
        # 3 judgments and the end of training; each of the 2 changes made in
        # time to be judged was also pre-checked on settled statistics.
        assert calls == [100] * 6


class TestBadInput(TestCase):
    def test_data_required(self):
        with pytest.raises(ValueError, match="data"):
            kc.EASIERCallback(None)

    def test_shape_mismatch_before_any_change(self):
        model = planted_model()
        before = [w.copy() for w in model.get_weights()]
        easier = kc.EASIERCallback(np.zeros((10, 3), "float32"))
        with pytest.raises(ValueError, match=r"expected shape \(None, 6\)"):
            fit(model, teacher_data(model), [easier], epochs=2)
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_non_finite_and_endless(self):
        model = planted_model()
        x = np.zeros((10, 6), "float32")
        x[0, 0] = np.nan
        with pytest.raises(ValueError, match="non-finite"):
            fit(model, teacher_data(model), [kc.EASIERCallback(x)], epochs=1)

        def endless():
            while True:
                yield np.zeros((4, 6), "float32")

        easier = kc.EASIERCallback(endless(), samples=8)
        fit(model, teacher_data(model), [easier], epochs=1)  # 8 rows read
        assert easier._data.shape == (8, 6)

    def test_no_collapsible_activation(self):
        inputs = keras.Input((4,))
        model = keras.Model(inputs, layers.Dense(1, activation="relu")(inputs))
        model.compile("sgd", "mse")
        x = np.zeros((8, 4), "float32")
        with pytest.raises(ValueError, match="make_collapsible"):
            model.fit(
                x, x[:, :1], epochs=1, verbose=0, callbacks=[kc.EASIERCallback(x)]
            )


def test_csv_logger_sees_easier_entries(tmp_path):
    model = entropy_model()
    x, y = inputs_and_targets(model)
    path = os.path.join(str(tmp_path), "log.csv")
    fit(model, (x, y), [frozen_easier(x), keras.callbacks.CSVLogger(path)], epochs=2)
    assert "easier_linearized" in open(path).read()
