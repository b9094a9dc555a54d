"""When the engine decides: every `interval` epochs, or every
`interval_steps` training steps between batches."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.callbacks.schedule import Schedule
from tests.testing import TestCase

layers = keras.layers
NAMES = [f"a{i}" for i in range(6)]
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def by_name(context, pairs):
    """The candidates in name order: a0 first."""
    return sorted(
        ((p, float(p.activation.name[1:])) for p in pairs), key=lambda s: s[1]
    )


def trained_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = inputs
    for name in NAMES:
        h = layers.Dense(8, name=f"{name}_dense")(h)
        h = layers.BatchNormalization(name=f"{name}_bn")(h)
        h = kc.CollapsiblePReLU(alpha_regularizer=None, name=name)(h)
    model = keras.Model(inputs, layers.Dense(2, name="head")(h))
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    return model


def data(n=64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


class TestSchedule(TestCase):
    def test_epoch_decisions(self):
        schedule = Schedule(warmup_epochs=2, interval=3, ramp_epochs=0)
        assert [e for e in range(10) if schedule.is_decision(e)] == [1, 4, 7]
        assert schedule.room_after(4, 8) and not schedule.room_after(5, 8)
        assert schedule.ramp_steps(10) == 0 and not schedule.in_steps

    def test_step_decisions(self):
        schedule = Schedule(
            warmup_epochs=2, interval=1, ramp_epochs=1, interval_steps=5
        )
        # The warm-up's end is the only decision at an epoch's end.
        assert [e for e in range(6) if schedule.is_decision(e)] == [1]
        assert [s for s in range(16) if schedule.is_decision_step(s)] == [5, 10, 15]
        assert schedule.room_after_step(5) and not schedule.room_after_step(4)
        assert schedule.room_after_step(None)
        assert schedule.ramp_steps(100) == 2  # half the interval

    @pytest.mark.parametrize("steps", [0, -1, 1.5, True, "3"])
    def test_bad_interval_steps(self, steps):
        with pytest.raises(ValueError, match="interval_steps"):
            Schedule(interval_steps=steps)


class TestDecisionsInSteps(TestCase):
    def fit(self, epochs=3, **kwargs):
        model = trained_model()
        x, y = data()
        callback = kc.LinearizationCallback(
            by_name,
            validation_data=(x, y),
            ramp_epochs=0,
            tolerance=10.0,  # accept every change: these tests count decisions
            precheck=False,
            verbose=0,
            **kwargs,
        )
        # 64 rows at batch 8: 8 steps an epoch.
        model.fit(x, y, batch_size=8, epochs=epochs, callbacks=[callback], verbose=0)
        return model, callback

    def test_a_short_fit_holds_more_decisions_than_epochs(self):
        _, by_epoch = self.fit(interval=1)
        model, by_steps = self.fit(interval_steps=3)
        assert by_epoch.linearized == ["a0", "a1"]
        # After the warm-up epoch (8 steps), every 3 steps while 3 are left
        # to judge the change: steps 3 and 6 of epoch 2, 1 and 4 of epoch 3.
        made = [e for e in by_steps.events if e["action"] == "linearized"]
        assert by_steps.linearized == NAMES[:5]
        assert [(e["epoch"], e.get("step")) for e in made] == [
            (1, None),
            (2, 3),
            (2, 6),
            (3, 1),
            (3, 4),
        ]
        judged = [e for e in by_steps.events if e["action"] == "accepted"]
        assert len(judged) == 5
        # The changes made between batches survived the rest of the fit (on
        # JAX the trainer's own state would overwrite an unsynced change).
        for name in NAMES[:5]:
            assert model.get_layer(name).is_linear, name
        assert not model.get_layer("a5").is_linear
        x, _ = data()
        small = kc.surgery(model)
        self.assert_close(
            small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4
        )

    def test_a_rollback_between_batches_restores_the_weights(self):
        class Flips(kc.LinearizationCallback):
            """Linearizes, and makes the head answer class 0: the loss must
            rise (half the rows are class 1)."""

            def make_change(self, decision):
                change = super().make_change(decision)
                head = self.model.get_layer("head")
                head.kernel.assign(0.0 * head.kernel)
                head.bias.assign(np.array([10.0, -10.0], "float32"))
                return change

        model = trained_model()
        model.compile(keras.optimizers.SGD(0.0), LOSS)
        head = model.get_layer("head").get_weights()
        x, y = data()
        callback = Flips(
            by_name,
            validation_data=(x, y),
            ramp_epochs=0,
            precheck=False,
            patience=10,
            interval_steps=4,
            verbose=0,
        )
        model.fit(x, y, batch_size=8, epochs=2, callbacks=[callback], verbose=0)
        rolled = [e for e in callback.events if e["action"] == "rolled back"]
        assert [(e["epoch"], e.get("step")) for e in rolled] == [(2, 4), (2, 8)]
        assert callback.linearized == [] and callback.kept == ["a0", "a1"]
        assert all(not model.get_layer(n).is_linear for n in NAMES)
        for now, before in zip(model.get_layer("head").get_weights(), head):
            np.testing.assert_array_equal(now, before)

    def test_needs_a_labelled_sample(self):
        x, y = data()
        with pytest.raises(ValueError, match="interval_steps.*validation_data"):
            kc.LinearizationCallback(by_name, data=x, interval_steps=4)
        with pytest.raises(ValueError, match="monitor"):
            kc.LinearizationCallback(
                by_name, validation_data=(x, y), monitor="val_loss", interval_steps=4
            )

    def test_ramp_over_half_the_steps(self):
        model = trained_model()
        x, y = data()
        callback = kc.LinearizationCallback(
            by_name,
            validation_data=(x, y),
            ramp_epochs=1,
            tolerance=10.0,
            precheck=False,
            interval_steps=4,
            verbose=0,
        )
        model.fit(x, y, batch_size=8, epochs=2, callbacks=[callback], verbose=0)
        made = [e for e in callback.events if e["action"] == "linearized"]
        assert made and all(e["ramp_steps"] == 2 for e in made)
        assert all(model.get_layer(n).is_linear for n in callback.linearized)
