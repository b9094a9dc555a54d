"""TLCCallback inside `fit`: its choices, its guard, its records."""

import csv
import functools
import os
import warnings

import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.scores.test_batchnorm import set_bn
from tests.testing import TestCase

layers = keras.layers
NAMES = ["a0", "split", "a2", "alive", "a4"]
PLANTED = ["alive", "split"]


def planted_model(seed=0):
    """Five Dense -> BN -> ReLU layers. In 'split' half the channels are
    always OFF (beta = -4, gamma = 0.5), half always ON (beta = +4); in
    'alive' all are always ON: both layers are exactly linear on any input.
    The others are coin tosses (beta = 0, gamma = 1). Training does not move
    the model (learning rate 0, BN statistics frozen by momentum 1): batch
    statistics would otherwise drift it, and these tests are about choices."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = inputs
    for name in NAMES:
        h = layers.Dense(8, name=f"{name}_dense")(h)
        bn = layers.BatchNormalization(momentum=1.0, name=f"{name}_bn")
        h = kc.CollapsibleActivation(alpha_regularizer=None, name=name)(bn(h))
        beta = {"split": [-4.0, 4.0] * 4, "alive": [4.0] * 8}.get(name, [0.0] * 8)
        gamma = np.full(8, 0.5 if name in PLANTED else 1.0)
        set_bn(bn, gamma, np.array(beta))
    model = keras.Model(inputs, layers.Dense(2, name="head")(h))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    return model


# The planted net's BN statistics are set by hand, not its data's, and frozen:
# a measurement on statistics re-estimated from the sample (what a measured
# ranking and the pre-check do by default) would measure another net.
AS_IT_IS = {"recalibrate": False}


def teacher_data(model, n=128, seed=0):
    """Inputs and the model's own outputs plus a little noise: the model
    starts at its best loss, so only a harmful linearization raises it."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype("float32")
    y = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    return x, y + 0.1 * rng.standard_normal(y.shape).astype("float32")


class LogInjector(keras.callbacks.Callback):
    """Writes `logs['probe']` (1.0, or 10.0 while `tlc` has linearized
    something) and records the weights before TLCCallback acts."""

    def __init__(self, tlc):
        super().__init__()
        self.tlc, self.weights = tlc, {}

    def on_epoch_end(self, epoch, logs=None):
        logs["probe"] = 10.0 if self.tlc.linearized else 1.0
        self.weights[epoch] = self.model.get_weights()


class WeightRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = self.model.get_weights()


def fit(model, data, callbacks, epochs, **kwargs):
    return model.fit(
        *data, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs
    )


class TestChoices(TestCase):
    def test_no_arguments_at_all(self):
        # The design card's usage: defaults decide at epochs 1 and 3 (warm-up
        # 1, interval 2) and leave the last 2 epochs to judge the second.
        model = planted_model()
        data = teacher_data(model)
        tlc = kc.TLCCallback(verbose=0)
        fit(model, data, [tlc], epochs=5)
        assert sorted(tlc.linearized) == PLANTED
        assert [e["epoch"] for e in tlc.events] == [1, 3, 3, 5]
        _, report = kc.surgery(model, return_report=True)
        assert report.after.depth == report.before.depth - 2

    def test_data_free_picks_the_planted_layers_first(self):
        model = planted_model()
        tlc = kc.TLCCallback(interval=1, max_layers=2, tolerance=1.0, verbose=0)
        fit(model, teacher_data(model), [tlc], epochs=4)
        assert sorted(tlc.linearized) == PLANTED
        assert tlc.events[-1]["action"] == "stopped"
        assert "max_layers" in tlc.events[-1]["reason"]

    def test_validation_picks_the_planted_layers_first(self):
        model = planted_model()
        data = teacher_data(model)
        tlc = kc.TLCCallback(data, interval=1, max_layers=2, verbose=0, **AS_IT_IS)
        fit(model, data, [tlc], epochs=4)
        assert sorted(tlc.linearized) == PLANTED
        first = tlc.events[0]
        assert first["action"] == "linearized" and first["ranking"] == "validation"
        increases = dict(first["ranked"])
        assert max(increases["split"], increases["alive"]) < 1e-6
        assert min(increases[n] for n in ("a0", "a2", "a4")) > 1e-4

    def test_multi_removal_takes_every_free_layer_at_once(self):
        model = planted_model()
        data = teacher_data(model)
        tlc = kc.TLCCallback(
            data, interval=1, multi_removal=True, verbose=0, **AS_IT_IS
        )
        fit(model, data, [tlc], epochs=2)
        assert sorted(tlc.events[0]["layers"]) == PLANTED

    def test_candidates_limit_the_choice(self):
        model = planted_model()
        tlc = kc.TLCCallback(interval=1, candidates=["alive"], tolerance=1.0, verbose=0)
        fit(model, teacher_data(model), [tlc], epochs=3)
        assert tlc.linearized == ["alive"]

    def test_random_ranking_is_seeded(self):
        chosen = []
        for _ in range(2):
            model = planted_model()
            tlc = kc.TLCCallback(
                ranking="random",
                seed=3,
                tolerance=1.0,
                interval=1,
                max_layers=2,
                verbose=0,
            )
            fit(model, teacher_data(model), [tlc], epochs=3)
            chosen.append(tlc.linearized)
        assert chosen[0] == chosen[1] and len(chosen[0]) == 2

    def test_no_change_too_late_to_be_judged(self):
        model = planted_model()
        tlc = kc.TLCCallback(warmup_epochs=1, interval=2, verbose=0)
        fit(model, teacher_data(model), [tlc], epochs=2)
        assert tlc.linearized == [] and tlc.events == []


class TestGuard(TestCase):
    def test_rollback_restores_the_weights_and_keeps_the_layer(self):
        model = planted_model()
        tlc = kc.TLCCallback(
            interval=1, monitor="probe", mode="min", patience=1, verbose=0
        )
        before, after = LogInjector(tlc), WeightRecorder()
        fit(model, teacher_data(model), [before, tlc, after], epochs=3)
        assert [e["action"] for e in tlc.events] == [
            "linearized",
            "rolled back",
            "stopped",
        ]
        first = tlc.events[0]["layers"][0]
        assert tlc.kept == [first] and tlc.linearized == [] and tlc.rollbacks == 1
        # Epoch 1 ends with exactly the weights epoch 0 ended with before the
        # linearization: the lock, the zeroed BN channels and the training since.
        for restored, snapshot in zip(after.weights[1], before.weights[0]):
            np.testing.assert_array_equal(restored, snapshot)
        assert not model.get_layer(first).is_locked
        assert model.get_layer(f"{first}_bn").gamma.constraint is None

    def test_accepted_changes_persist_through_fit(self):
        model = planted_model()
        tlc = kc.TLCCallback(interval=1, max_layers=1, tolerance=1.0, verbose=0)
        fit(model, teacher_data(model), [tlc], epochs=4)
        (name,) = tlc.linearized
        assert model.get_layer(name).is_locked
        if name == "split":  # its OFF channels: zeroed, and still zero
            gamma = keras.ops.convert_to_numpy(model.get_layer("split_bn").gamma)
            np.testing.assert_array_equal(gamma[::2], 0.0)
            assert np.all(gamma[1::2] != 0.0)

    def test_surgery_after_fit_is_exact(self):
        model = planted_model()
        data = teacher_data(model)
        tlc = kc.TLCCallback(interval=1, max_layers=2, tolerance=1.0, verbose=0)
        fit(model, data, [tlc], epochs=4)
        small, report = kc.surgery(model, return_report=True)
        expected = keras.ops.convert_to_numpy(model(data[0]))
        got = keras.ops.convert_to_numpy(small(data[0]))
        assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected))
        assert report.after.depth < report.before.depth

    @pytest.mark.parametrize(
        "with_data", [False, True], ids=["data_free", "validation"]
    )
    def test_training_stopped_right_after_a_change(self, with_data):
        class StopNow(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                self.model.stop_training = True

        model = planted_model()
        data = teacher_data(model)
        tlc = kc.TLCCallback(
            data if with_data else None, interval=1, verbose=0, **AS_IT_IS
        )
        fit(model, data, [tlc, StopNow()], epochs=5)
        actions = [e["action"] for e in tlc.events]
        if with_data:  # judged on the sample at the end of training
            assert actions == ["linearized", "accepted"] and tlc.linearized
        else:  # nothing in the logs says how it went: undone
            assert actions == ["linearized", "rolled back"] and not tlc.linearized
            assert "no epoch" in tlc.events[-1]["reason"]

    def test_monitor_auto_prefers_validation_accuracy(self):
        model = planted_model()
        model.compile(keras.optimizers.SGD(0.0), "mse", metrics=["mae", "accuracy"])
        x, y = teacher_data(model)
        tlc = kc.TLCCallback(interval=1, tolerance=1.0, verbose=0)
        fit(model, (x, y), [tlc], epochs=1, validation_data=(x, y))
        assert tlc.monitored == "val_accuracy"


class TestRecords(TestCase):
    def test_logs_history_csv_and_other_callbacks(self, tmp_path):
        model = planted_model()
        data = teacher_data(model)
        tlc = kc.TLCCallback(data, interval=1, max_layers=2, verbose=1)
        csv_path = os.path.join(str(tmp_path), "log.csv")
        checkpoint = os.path.join(str(tmp_path), "best.keras")
        callbacks = [
            tlc,  # before the loggers, so that they see its entries
            keras.callbacks.CSVLogger(csv_path),
            keras.callbacks.EarlyStopping(patience=10),
            keras.callbacks.ModelCheckpoint(checkpoint),
            keras.callbacks.ReduceLROnPlateau(patience=1),
        ]
        history = fit(model, data, callbacks, epochs=4, validation_data=data)
        assert history.history["tlc_linearized"][-1] == 2.0
        assert "tlc_val_loss" in history.history
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        assert [float(r["tlc_linearized"]) for r in rows][-1] == 2.0
        loaded = keras.saving.load_model(checkpoint)
        locked = [
            layer.name for layer in kc.collapsible_layers(loaded) if layer.is_locked
        ]
        assert sorted(locked) == sorted(tlc.linearized)

    def test_verbose_lines(self, capsys):
        model = planted_model()
        tlc = kc.TLCCallback(interval=1, max_layers=1, tolerance=1.0)
        fit(model, teacher_data(model), [tlc], epochs=3)
        out = capsys.readouterr().out
        assert "Epoch 1: TLCCallback linearized" in out and "accepted" in out

    def test_state_resets_between_fits(self):
        model = planted_model()
        data = teacher_data(model)
        tlc = kc.TLCCallback(interval=1, max_layers=1, tolerance=1.0, verbose=0)
        fit(model, data, [tlc], epochs=2)
        first = list(tlc.linearized)
        fit(model, data, [tlc], epochs=2)
        assert len(tlc.linearized) == 1 and tlc.linearized != first


class TestBadInput(TestCase):
    def test_no_collapsible_activation(self):
        inputs = keras.Input((4,))
        model = keras.Model(inputs, layers.Dense(1, activation="relu")(inputs))
        model.compile("sgd", "mse")
        x = np.zeros((8, 4), "float32")
        with pytest.raises(ValueError, match="make_collapsible"):
            model.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[kc.TLCCallback()])

    def test_no_batchnorm_warns_once(self):
        inputs = keras.Input((4,))
        h = kc.CollapsibleActivation(name="act")(layers.Dense(4)(inputs))
        model = keras.Model(inputs, layers.Dense(1)(h))
        model.compile("sgd", "mse")
        x = np.zeros((8, 4), "float32")
        tlc = kc.TLCCallback(interval=1)
        # The warning names the options: data-driven statistics, measured loss.
        with pytest.warns(UserWarning, match=r"data=x_sample.*validation_data"):
            model.fit(x, x[:, :1], epochs=3, verbose=0, callbacks=[tlc])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.fit(x, x[:, :1], epochs=3, verbose=0, callbacks=[tlc])
        assert tlc.linearized == [] and not model.get_layer("act").is_locked

    def test_non_finite_bn_is_skipped_not_raised(self):
        model = planted_model()
        gamma = np.full(8, 0.05, "float32")
        gamma[0] = np.inf
        set_bn(model.get_layer("split_bn"), gamma)
        x = teacher_data(planted_model())[0]
        tlc = kc.TLCCallback(interval=1, max_layers=1, tolerance=1.0, verbose=0)
        model.fit(x, np.zeros((len(x), 2)), epochs=3, verbose=0, callbacks=[tlc])
        assert "split" in tlc.kept and "split" not in tlc.linearized
        assert any(e["action"] == "skipped" for e in tlc.events)

    def test_unknown_candidate(self):
        model = planted_model()
        tlc = kc.TLCCallback(candidates=["nope"])
        with pytest.raises(ValueError, match="nope"):
            fit(model, teacher_data(model), [tlc], epochs=1)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"multi_removal": True}, "validation_data"),
            ({"ranking": "validation"}, "validation_data"),
            ({"ranking": "best"}, "ranking"),
            ({"interval": 0}, "interval"),
            ({"warmup_epochs": 0}, "warmup_epochs"),
            ({"tolerance": -1}, "tolerance"),
            ({"candidates": "a0"}, "candidates"),
            ({"max_layers": 0}, "max_layers"),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            kc.TLCCallback(**kwargs)

    def test_bad_validation_data(self):
        model = planted_model()
        with pytest.raises(ValueError, match="validation_data"):
            fit(model, teacher_data(model), [kc.TLCCallback(validation_data=3)], 1)


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, size):
        super().__init__()
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, i):
        part = slice(i * self.size, (i + 1) * self.size)
        return self.x[part], self.y[part]


def _validation_kinds(x, y):
    """Every documented form of `validation_data`, by name."""
    from tests.testing import require

    def generator():
        for i in range(0, len(x), 32):
            yield x[i : i + 32], y[i : i + 32]

    kinds = {
        "arrays": lambda: (x, y),
        # Exactly two batches: a list that must not be read as one (x, y).
        "list_of_batches": lambda: [(x[:64], y[:64]), (x[64:], y[64:])],
        "py_dataset": lambda: _Batches(x, y, 32),
        "generator": generator,
    }

    def tf_data():
        tf = require("tensorflow", "tf.data validation data")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)

    def data_loader():
        torch = require("torch", "DataLoader validation data")
        dataset = torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y))
        return torch.utils.data.DataLoader(dataset, batch_size=32)

    kinds["tf_data"] = tf_data
    kinds["data_loader"] = data_loader
    return kinds


class TestValidationDataKinds(TestCase):
    @pytest.mark.parametrize(
        "kind",
        ["list_of_batches", "py_dataset", "generator", "tf_data", "data_loader"],
    )
    def test_each_form_decides_as_arrays_do(self, kind):
        decisions = {}
        for name in ("arrays", kind):
            model = planted_model()
            x, y = teacher_data(model)
            tlc = kc.TLCCallback(
                validation_data=_validation_kinds(x, y)[name](),
                ranking="validation",
                interval=1,
                max_layers=2,
                verbose=0,
            )
            fit(model, (x, y), [tlc], epochs=3)
            decisions[name] = [(e["action"], e.get("layers")) for e in tlc.events]
        assert decisions[kind] == decisions["arrays"]
        assert any(action == "linearized" for action, _ in decisions[kind])


class TestUninformedLayers(TestCase):
    def test_data_free_leaves_alone_what_its_bn_does_not_tell(self):
        # a0, a2, a4 are coin tosses (beta 0): their score is what an
        # untrained BN scores, so nothing is known, and a guard that accepts
        # anything (tolerance 1) still never sees them changed.
        model = planted_model()
        tlc = kc.TLCCallback(interval=1, tolerance=1.0, verbose=0)
        with pytest.warns(UserWarning, match="pass `data=x_sample`"):
            fit(model, teacher_data(model), [tlc], epochs=6)
        assert sorted(tlc.linearized) == PLANTED
        assert tlc.events[-1]["action"] == "waited"
        assert "data=" in tlc.events[-1]["reason"]

    def test_only_channels_the_table_calls_off_are_zeroed(self):
        model = planted_model()
        bn = model.get_layer("a0_bn")
        # Leaning OFF (P(OFF) = 0.84) in half the channels, surely OFF in
        # the other half.
        set_bn(bn, np.full(8, 1.0), np.array([-1.0, -4.0] * 4))
        model.get_layer("a0_bn").gamma.assign(np.array([1.0, 0.5] * 4, "float32"))
        (done,) = kc.linearize(model, "a0")
        states = kc.analyze_batchnorm(model)
        assert done.off == 4  # the surely OFF ones only
        gamma = keras.ops.convert_to_numpy(bn.gamma)
        np.testing.assert_array_equal(gamma == 0, [False, True] * 4)
        assert states["a0"].linearized


class EpochCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1


class TestPrecheck(TestCase):
    def test_a_harmful_change_is_refused_at_once_and_the_next_tried(self):
        # A ranking that puts "a0" (a coin toss: half its pre-activations
        # negative) first, then the planted linear layers. Linearizing a0
        # moves the outputs far from the labels; the pre-check sees that on
        # the sample and takes the next candidate at the same decision: no
        # epoch is lost to it.
        def a0_first(context, pairs):
            order = ["a0", "alive", "split"]
            return [
                (p, order.index(p.activation.name))
                for p in pairs
                if p.activation.name in order
            ]

        model = planted_model()
        data = teacher_data(model)
        # precheck=0.02: at most 2 % of the predictions may change at once
        # (by default 10 %: a change may cost more before its recovery).
        tlc = kc.TLCCallback(
            data, ranking=a0_first, interval=1, precheck=0.02, verbose=0, **AS_IT_IS
        )
        counter = EpochCounter()
        fit(model, data, [tlc, counter], epochs=2)
        actions = [(e["action"], e["layers"]) for e in tlc.events]
        assert actions[:2] == [("refused", ["a0"]), ("linearized", ["alive"])]
        assert tlc.events[0]["epoch"] == tlc.events[1]["epoch"] == 1
        # Not kept nonlinear: tried again at a later decision.
        assert counter.epochs == 2 and "a0" not in tlc.kept
        assert not model.get_layer("a0").is_locked
        assert model.get_layer("a0_bn").gamma.constraint is None

    def test_precheck_off_keeps_the_guard_alone(self):
        model = planted_model()
        data = teacher_data(model)
        tlc = kc.TLCCallback(data, interval=1, max_layers=1, precheck=False, verbose=0)
        fit(model, data, [tlc], epochs=2)
        assert "refused" not in [e["action"] for e in tlc.events]

    def test_default_tolerance_is_five_times_the_guards(self):
        from keras_collapse.callbacks.precheck import Precheck

        accuracy = Precheck(None, None, None, None, 32)
        accuracy.key = "accuracy"
        assert accuracy._passes(0.81, 0.9) and not accuracy._passes(0.79, 0.9)
        loss = Precheck(None, None, None, 0.1, 32)
        loss.key = "loss"
        assert loss._passes(1.49, 1.0) and not loss._passes(1.51, 1.0)
        own = Precheck(None, None, None, None, 32, own_tolerance=0.01)
        own.key = "accuracy"
        assert own._passes(0.895, 0.9) and not own._passes(0.885, 0.9)

    @pytest.mark.parametrize("bad", ["yes", 0, -0.1, None])
    def test_bad_precheck(self, bad):
        with pytest.raises(ValueError, match="precheck"):
            kc.TLCCallback(precheck=bad)


def shifted_model(seed=0):
    """Dense -> BN -> ReLU6 'sat' -> Dense -> BN 'after' -> ReLU -> head.
    Two of sat's channels sit at a constant 30 (gamma 0), so its ReLU6
    holds them at 6: linearizing it shifts the next Dense's output by a
    constant, which BN 'after' removes exactly once its statistics are
    re-estimated, and which its stale moving statistics pass on (a wreck).
    Learning rate 0 and momentum 1: training moves nothing. The labels are
    the model's own arg-max, so its accuracy starts at 1."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = layers.Dense(8, name="first")(inputs)
    bn = layers.BatchNormalization(momentum=1.0, name="sat_bn")
    h = kc.CollapsibleActivation("relu6", name="sat")(bn(h))
    h = layers.Dense(8, name="second")(h)
    h = layers.BatchNormalization(momentum=1.0, name="after")(h)
    h = kc.CollapsibleActivation(name="late")(h)
    model = keras.Model(inputs, layers.Dense(3, name="head")(h))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 6)).astype("float32")
    # Surely ON below 6 (beta 3, gamma 0.3) but for the two held at 30.
    set_bn(bn, [0.3] * 6 + [0.0] * 2, [3.0] * 6 + [30.0] * 2)
    kc.recalibrate_batchnorm(model, x, in_place=True)  # exact statistics
    y = np.argmax(keras.ops.convert_to_numpy(model.predict(x, verbose=0)), -1)
    model.compile(
        keras.optimizers.SGD(0.0),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model, (x, y.astype("int32"))


def sat_only(validation_data, recalibrate, **kwargs):
    """TLC with the validation sample, deciding on `shifted_model`'s 'sat'
    alone, every epoch."""
    return kc.TLCCallback(
        validation_data=validation_data,
        candidates=["sat"],
        interval=1,
        recalibrate=recalibrate,
        verbose=0,
        **kwargs,
    )


def moving_statistics(model):
    return [
        keras.ops.convert_to_numpy(w)
        for layer in model.layers
        if isinstance(layer, layers.BatchNormalization)
        for w in (layer.moving_mean, layer.moving_variance)
    ]


class TestMeasuredOnSettledStatistics(TestCase):
    """Without `data`, the pre-check, the guard and the measured ranking
    measure a change on BN statistics re-estimated from the labelled
    sample's inputs (then put back): stale moving statistics would read a
    harmless change as a wreck."""

    def test_measures_the_change_on_re_estimated_statistics_and_puts_them_back(
        self,
    ):
        from keras_collapse.actions.recalibrate import BatchNormRecalibrator
        from keras_collapse.callbacks.precheck import Precheck

        model, (x, y) = shifted_model()
        kc.linearize(model, "sat")
        before = moving_statistics(model)
        # The oracle: a recalibrated copy, evaluated by Keras.
        settled = kc.recalibrate_batchnorm(model, x)
        settled.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        oracle = settled.evaluate(x, y, verbose=0, return_dict=True)
        expected, base_loss = oracle["accuracy"], oracle["loss"]
        stale_loss = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
        settle = BatchNormRecalibrator(model).settled
        precheck = Precheck(
            model,
            (x, y, None),
            None,
            None,
            64,
            settle=functools.partial(settle, x, batch_size=64),
        )
        assert precheck.before() == pytest.approx(expected, abs=1e-6)
        # The shift removed (every prediction kept), or passed on (a wreck).
        assert expected == 1.0 and stale_loss > 5 * base_loss
        for a, b in zip(moving_statistics(model), before):
            np.testing.assert_array_equal(a, b)

    @pytest.mark.parametrize("recalibrate", ["auto", False])
    def test_a_harmless_change_passes_only_on_settled_statistics(self, recalibrate):
        model, data = shifted_model()
        before = moving_statistics(model)
        tlc = sat_only(data, recalibrate, ramp_epochs=0)
        recorder = StatisticsRecorder()
        fit(model, data, [tlc, recorder], epochs=2)
        first = tlc.events[0]
        if recalibrate == "auto":
            assert (first["action"], first["layers"]) == ("linearized", ["sat"])
            # The re-estimated statistics were put back after measuring.
            for a, b in zip(recorder.statistics[first["epoch"] - 1], before):
                np.testing.assert_array_equal(a, b)
        else:
            assert (first["action"], first["layers"]) == ("refused", ["sat"])

    @pytest.mark.parametrize("recalibrate", ["auto", False])
    def test_the_guard_judges_on_settled_statistics(self, recalibrate):
        # Momentum 1: the moving statistics never catch up with the change,
        # as after too few steps of a real fine-tune.
        model, data = shifted_model()
        tlc = sat_only(data, recalibrate, ramp_epochs=0, precheck=False)
        fit(model, data, [tlc], epochs=3)
        actions = [e["action"] for e in tlc.events[:2]]
        judged = "accepted" if recalibrate == "auto" else "rolled back"
        assert actions == ["linearized", judged]

    @pytest.mark.parametrize("recalibrate", ["auto", False])
    def test_the_measured_ranking_on_settled_statistics(self, recalibrate):
        model, (x, y) = shifted_model()
        # The oracle: the loss increase of a recalibrated linearized copy.
        linear = keras.models.clone_model(model)
        linear.set_weights(model.get_weights())
        kc.linearize(linear, "sat")
        if recalibrate == "auto":
            linear = kc.recalibrate_batchnorm(linear, x)
        linear.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        base = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
        expected = linear.evaluate(x, y, verbose=0, return_dict=True)["loss"] - base
        tlc = sat_only((x, y), recalibrate, precheck=False)
        fit(model, (x, y), [tlc], epochs=2)
        ((name, increase),) = tlc.events[0]["ranked"]
        assert name == "sat"
        assert increase == pytest.approx(expected, abs=1e-4)
        # settled: nothing lost; as it is: a wreck
        assert (expected < 1e-3) == (recalibrate == "auto")


class StatisticsRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.statistics = {}

    def on_epoch_end(self, epoch, logs=None):
        self.statistics[epoch] = moving_statistics(self.model)
