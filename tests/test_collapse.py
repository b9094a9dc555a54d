"""`kc.collapse`: the one call from a compiled model to a shallower one."""

import math

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.collapse import TEMPERATURE
from keras_collapse.collapse import _distiller
from tests.callbacks.test_joint import digits
from tests.callbacks.test_joint import small_cnn
from tests.testing import TestCase
from tests.testing import slow_off_torch


def trained(seed=0):
    model = small_cnn(seed, gates=False)
    x, y = digits()
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    return model


def run(model, **kwargs):
    x, y = digits()
    options = dict(
        validation_data=(x[:128], y[:128]),
        epochs=4,
        batch_size=64,
        latency=False,
        verbose=0,
    )
    return kc.collapse(model, (x, y), **{**options, **kwargs})


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class TestCollapse(TestCase):
    def test_half_the_activations_and_a_plain_shallower_model(self):
        model = trained()
        weights = [w.copy() for w in model.get_weights()]
        config = model.get_config()
        small, report = run(model, target=0.5)
        candidates = report.candidates
        assert candidates == 5
        assert len(report.linearized) == math.ceil(0.5 * candidates)
        assert report.after.depth < report.before.depth
        assert report.after.activations == 5 - len(report.linearized)
        # Plain Keras, compiled like the input model.
        assert not any("keras_collapse" in type(la).__module__ for la in small.layers)
        assert small.compiled and small.loss is not None
        assert (
            set(report.metrics_before)
            == set(report.metrics_after)
            == {
                "accuracy",
                "loss",
            }
        )
        x, y = digits()
        got = small.evaluate(x[:128], y[:128], verbose=0, return_dict=True)
        assert got["accuracy"] == pytest.approx(report.metrics_after["accuracy"])
        # The input model never changes.
        for before, after in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(before, after)
        assert model.get_config() == config

    def test_depth_objective_saves_the_asked_share_of_the_folded_depth(self):
        model = trained()
        folded = kc.surgery(model, merge=False, cut_dead_channels=False)
        base = kc.model_stats(folded).depth
        small, report = run(model, objective="depth", target=0.3)
        assert base - report.after.depth >= 0.3 * base, (base, report.after.depth)

    @slow_off_torch
    def test_teacher_auto_distills_and_reports_it(self):
        model = trained()
        small, report = run(model, target=0.4, teacher="auto")
        assert report.teacher == "auto"
        assert len(report.linearized) == 2

    def test_distillation_loss_against_numpy(self):
        model = trained()
        student = kc.make_collapsible(model, trainable_alpha=True)
        distiller = _distiller(model, student, model.get_compile_config())
        (term,) = distiller.distillation_losses
        rng = np.random.default_rng(0)
        t = rng.standard_normal((6, 10)).astype("float32")
        s = rng.standard_normal((6, 10)).astype("float32")
        got = float(keras.ops.convert_to_numpy(term.compute_loss(t, s)))
        p, q = softmax(t / TEMPERATURE), softmax(s / TEMPERATURE)
        want = np.mean(np.sum(p * np.log(p / q), axis=-1)) * TEMPERATURE**2
        assert got == pytest.approx(want, rel=1e-4)
        assert got > 0

    @slow_off_torch
    def test_verbose_prints_stages_and_the_report(self, capsys):
        model = trained()
        run(model, target=0.2, epochs=2, verbose=1)
        out = capsys.readouterr().out
        for stage in ("convert", "fine-tune", "surgery", "evaluate"):
            assert f"] {stage}" in out, stage
        assert "activations linearized" in out and "Validation metrics" in out


class TestBadInput(TestCase):
    def test_uncompiled_model_asks_for_compile(self):
        model = small_cnn(gates=False)
        uncompiled = keras.Model(model.inputs, model.outputs)
        with pytest.raises(ValueError, match=r"model\.compile"):
            run(uncompiled)

    @pytest.mark.parametrize("target", [0, 1.2, True, "half"])
    def test_bad_target(self, target):
        with pytest.raises(ValueError, match="target"):
            run(small_cnn(gates=False), target=target)

    def test_unknown_objective(self):
        with pytest.raises(ValueError, match="objective"):
            run(small_cnn(gates=False), objective="width")

    def test_data_that_does_not_fit(self):
        model = small_cnn(gates=False)
        with pytest.raises(ValueError, match="does not fit"):
            kc.collapse(model, (np.zeros((16, 6, 6, 1)), np.zeros(16)), verbose=0)

    def test_unreachable_depth_target_before_training(self):
        model = trained()
        weights = [w.copy() for w in model.get_weights()]
        with pytest.raises(ValueError, match=r"cannot be reached.*target <= "):
            run(model, objective="depth", target=0.9)
        for before, after in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(before, after)

    def test_teacher_with_other_outputs(self):
        model = trained()
        inputs = keras.Input((8, 8, 1))
        other = keras.Model(
            inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
        )
        with pytest.raises(ValueError, match="teacher"):
            run(model, teacher=other)
        with pytest.raises(ValueError, match="teacher"):
            run(model, teacher="yes")

    def test_no_activation_to_collapse(self):
        inputs = keras.Input((64,))
        model = keras.Model(inputs, keras.layers.Dense(10)(inputs))
        model.compile("adam", "sparse_categorical_crossentropy")
        x, y = digits()
        with pytest.raises(ValueError, match="no activation to collapse"):
            kc.collapse(model, (x.reshape(-1, 64), y), verbose=0)


class TestPhaseShares:
    def test_auto_recovers_longer_for_blocks(self):
        from keras_collapse.collapse import phase_shares

        assert phase_shares("activations", "auto", "auto") == (0.5, 0.25)
        assert phase_shares("depth", "auto", "auto") == (0.4, 0.2)
        assert phase_shares("latency", "auto", 0.1) == (0.4, 0.1)
        assert phase_shares("depth", 0.3, "auto") == (0.3, 0.2)


class TestPortableCompile:
    def test_a_resolved_false_jit_compile_is_left_to_the_loading_backend(self):
        from keras_collapse.collapse import _portable

        config = {"loss": "mse", "jit_compile": False}
        assert _portable(config)["jit_compile"] == "auto"
        assert config["jit_compile"] is False  # the input's config is not edited
        assert _portable({"loss": "mse", "jit_compile": True})["jit_compile"] is True
