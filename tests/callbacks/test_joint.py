"""JointLinearizationCallback inside `fit`: the budget it lands on, the
gates' polarization, the exact hard set, resuming, the budget helpers."""

import math

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import keras_collapse as kc
from keras_collapse.callbacks.budget import Budget
from keras_collapse.callbacks.budget import Multiplier
from keras_collapse.callbacks.joint import CHOSEN
from keras_collapse.callbacks.joint import PINNED
from tests.testing import TestCase

layers = keras.layers


def digits(n=512):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    return x[:n], y[:n].astype("int32")


def small_cnn(seed=0, gates=True):
    """Conv/BN/ReLU x4, then a Dense head with a ReLU: five activations,
    compiled at Adam 3e-3."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = inputs
    for filters, kernel in ((8, 3), (16, 1), (16, 3), (16, 1)):
        h = layers.Conv2D(filters, kernel, padding="same", use_bias=False)(h)
        h = layers.BatchNormalization(momentum=0.9)(h)
        h = layers.ReLU()(h)
    h = layers.GlobalAveragePooling2D()(h)
    h = layers.Dense(32, activation="relu")(h)
    model = keras.Model(inputs, layers.Dense(10)(h))
    if gates:
        model = kc.make_collapsible(model, trainable_alpha=True)
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def fit(model, callback, epochs=4, initial_epoch=0, extra=()):
    x, y = digits()
    return model.fit(
        x,
        y,
        batch_size=64,
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=[callback, *extra],
        verbose=0,
    )


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.model.stop_training = True


class TestBudget(TestCase):
    @pytest.mark.parametrize("target, k", [(0.2, 1), (0.4, 2), (0.5, 3), (1.0, 5)])
    def test_controller_lands_on_exactly_k(self, target, k):
        model = small_cnn()
        joint = kc.JointLinearizationCallback(target, data=digits()[0], verbose=0)
        fit(model, joint)
        assert len(joint.linearized) == k == math.ceil(target * 5)
        pairs = kc.collapsible_layers(model)
        assert sorted(la.name for la in pairs if la.is_locked) == sorted(
            joint.linearized
        )
        for layer in pairs:
            if layer.name in joint.linearized:
                assert layer.alpha_range == CHOSEN
            else:  # exactly the activation, and held there
                assert layer.alpha_range == PINNED
                assert float(np.max(np.abs(layer.alpha_numpy()))) == 0.0

    def test_gates_polarize_before_the_hard_set(self):
        model = small_cnn()
        joint = kc.JointLinearizationCallback(0.6, data=digits()[0], verbose=0)
        fit(model, joint)
        (hard,) = [e for e in joint.events if e["action"] == "hard set"]
        (start,) = [e for e in joint.events if e["action"] == "started"]
        gates = hard["gates"]
        chosen = set(hard["layers"])
        # Near 0 or 1 after the push: a few optimizer steps at most (Adam's
        # momentum shortens the steps just after a gate changes direction).
        near = 3 * start["gate_step"] + 1e-6
        assert all(gates[n] >= 1 - near for n in chosen), (gates, near)
        assert all(gates[n] <= near for n in gates if n not in chosen), gates
        rest = [gates[n] for n in gates if n not in chosen]
        assert min(gates[n] for n in chosen) - max(rest) > 0.5, gates
        # The search let the gates move away from 0 (not a fixed schedule).
        first = joint.gate_history[0]
        assert max(first.values()) > 0.2, first

    def test_logs_every_epoch(self):
        model = small_cnn()
        joint = kc.JointLinearizationCallback(0.4, verbose=0)
        history = fit(model, joint)
        for key in (
            "joint_gate_mean",
            "joint_gates_open",
            "joint_multiplier",
            "joint_linearized",
        ):
            assert len(history.history[key]) == 4, key
        assert history.history["joint_linearized"][-1] == 2.0
        assert history.history["joint_multiplier"][0] > 0  # the budget was short

    def test_hard_set_model_equals_its_surgery(self):
        model = small_cnn()
        x, _ = digits()
        joint = kc.JointLinearizationCallback(0.6, data=x, verbose=0)
        fit(model, joint)
        small, report = kc.surgery(model, return_report=True, sample_inputs=x[:64])
        self.assert_close(
            small.predict(x[:128], verbose=0),
            model.predict(x[:128], verbose=0),
            atol=2e-4,
            rtol=2e-4,
        )
        assert report.after.depth < report.before.depth

    def test_multiplier_is_dual_ascent(self):
        m = Multiplier(0.5)
        assert m.update(have=1.0, need=2.0) == pytest.approx(0.25)
        assert m.update(have=3.0, need=2.0) == pytest.approx(0.0)

    def test_budget_select_takes_the_top_gates_ties_to_the_prior(self):
        budget = Budget("activations", 0.5, list("abcd"), np.ones(4), 2, 4)
        assert budget.select(np.array([0.1, 0.9, 0.8, 0.2])) == ["b", "c"]
        ties = np.array([0.0, 1.0, 0.0, 1.0])
        assert budget.select(np.array([0.5] * 4), ties) == ["a", "c"]


class TestDepthObjective(TestCase):
    def test_depth_target_is_met_by_the_surgery(self):
        model = small_cnn()
        x, _ = digits()
        joint = kc.JointLinearizationCallback(0.3, objective="depth", data=x, verbose=0)
        fit(model, joint)
        folded = kc.surgery(model, merge=False, cut_dead_channels=False)
        base_depth = kc.model_stats(folded).depth
        small = kc.surgery(model, sample_inputs=x[:64])
        saved = base_depth - kc.model_stats(small).depth
        assert saved >= 0.3 * base_depth, (saved, base_depth, joint.linearized)

    def test_unreachable_depth_target_says_the_most_that_can_be(self):
        model = small_cnn()
        joint = kc.JointLinearizationCallback(0.95, objective="depth", verbose=0)
        with pytest.raises(ValueError, match=r"cannot be reached.*target <= "):
            fit(model, joint)
        assert not any(la.is_locked for la in kc.collapsible_layers(model))


class TestResume(TestCase):
    @pytest.mark.parametrize("stop", [1, 3])
    def test_save_and_reload_mid_fit_resumes(self, tmp_path, stop):
        model = small_cnn()
        x, _ = digits()
        first = kc.JointLinearizationCallback(0.6, data=x, verbose=0)
        fit(model, first, extra=[StopAfter(stop)])
        loaded = self.save_and_load(model, tmp_path)
        again = kc.JointLinearizationCallback(0.6, data=x, verbose=0)
        fit(loaded, again, initial_epoch=stop)
        locked = [la.name for la in kc.collapsible_layers(loaded) if la.is_locked]
        assert len(locked) == 3 and sorted(locked) == sorted(again.linearized)
        if stop == 3:  # past the hard set: the saved set is kept
            assert [e["action"] for e in again.events] == ["resumed"]
            assert sorted(again.linearized) == sorted(first.linearized)
        small = kc.surgery(loaded, sample_inputs=x[:64])
        self.assert_close(
            small.predict(x[:64], verbose=0),
            loaded.predict(x[:64], verbose=0),
            atol=2e-4,
            rtol=2e-4,
        )


class TestBadInput(TestCase):
    @pytest.mark.parametrize("target", [0, 1.5, -0.1, True, "half", None])
    def test_bad_target(self, target):
        with pytest.raises(ValueError, match="target"):
            kc.JointLinearizationCallback(target)

    def test_unknown_objective(self):
        with pytest.raises(ValueError, match="objective"):
            kc.JointLinearizationCallback(0.5, objective="width")

    def test_phases_leave_room_to_recover(self):
        with pytest.raises(ValueError, match="search \\+ polarize"):
            kc.JointLinearizationCallback(0.5, search=0.6, polarize=0.4)

    def test_frozen_slopes_say_how_to_convert(self):
        model = small_cnn(gates=False)
        model = kc.make_collapsible(model)  # slopes frozen
        model.compile("adam", "sparse_categorical_crossentropy")
        with pytest.raises(ValueError, match="trainable_alpha=True"):
            fit(model, kc.JointLinearizationCallback(0.5, verbose=0))

    def test_no_candidates_is_the_callbacks_error(self):
        inputs = keras.Input((4,))
        model = keras.Model(inputs, layers.Dense(2)(inputs))
        model.compile("adam", "mse")
        x = np.zeros((8, 4), "float32")
        with pytest.raises(ValueError, match="found no collapsible activation"):
            model.fit(
                x, x[:, :2], callbacks=[kc.JointLinearizationCallback()], verbose=0
            )

    def test_data_that_does_not_fit(self):
        model = small_cnn()
        joint = kc.JointLinearizationCallback(0.5, data=np.zeros((8, 5, 5, 1)))
        with pytest.raises(ValueError, match="does not fit"):
            fit(model, joint)


class TestPrior(TestCase):
    def test_prior_ranks_the_candidates_and_breaks_ties(self):
        model = small_cnn()
        x, _ = digits()

        # A user's scorer: the Dense head safest, then the graph's order.
        def head_first(context, pairs):
            return [
                (p, 0.0 if p.activation.name == "dense_relu" else 1.0 + i)
                for i, p in enumerate(pairs)
            ]

        joint = kc.JointLinearizationCallback(
            0.2, data=x, prior=head_first, gate_lr_scale=1e-9, verbose=0
        )
        # Gates that cannot move (scale ~0): every gate ties at 0, so the
        # prior alone decides the one chosen.
        fit(model, joint)
        assert joint.linearized == ["dense_relu"]

    def test_easier_prior_needs_data(self):
        with pytest.raises(ValueError, match="data"):
            kc.JointLinearizationCallback(0.5, prior="easier")

    def test_bad_prior(self):
        with pytest.raises(ValueError, match="prior"):
            kc.JointLinearizationCallback(0.5, prior="best")
