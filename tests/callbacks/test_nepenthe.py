"""NEPENTHECallback: entropy-steered pruning rounds, zero-entropy layers
linearized, guard and rollback of weights and masks, records."""

import math

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.masks import held_mask
from keras_collapse.scores.statistics import binary_entropy
from tests.callbacks.test_easier import entropy_model
from tests.callbacks.test_easier import inputs_and_targets
from tests.callbacks.test_tlc import fit
from tests.scores.test_batchnorm import set_bn
from tests.testing import TestCase

layers = keras.layers
KERNELS = {
    "alive": "alive_dense",
    "toss1": "toss1_dense",
    "mostly": "mostly_dense",
    "toss2": "toss2_dense",
    "split": "split_dense",
}


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def trainable_model(seed=0):
    """Dense -> BN -> PReLU twice, then Dense -> PReLU without BN; Adam."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = inputs
    for i in range(2):
        h = layers.Dense(12, name=f"d{i}")(h)
        h = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(h)
        h = kc.CollapsiblePReLU(name=f"a{i}")(h)
    h = kc.CollapsiblePReLU(name="a2")(layers.Dense(8, name="d2")(h))
    model = keras.Model(inputs, layers.Dense(2, name="head")(h))
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


def regression_data(n=256):
    x = np.random.default_rng(0).standard_normal((n, 6)).astype("float32")
    y = np.random.default_rng(1).standard_normal((n, 2)).astype("float32")
    return x, y


class Recorder(keras.callbacks.Callback):
    """Kernels and masks of the given layers at every epoch end (list it
    before NEPENTHECallback: what the round saw; after it: what it did)."""

    def __init__(self, names):
        super().__init__()
        self.names, self.kernels, self.masks, self.weights = names, {}, {}, {}

    def on_epoch_end(self, epoch, logs=None):
        kc.sync_training_state(self.model)
        self.weights[epoch] = [w.copy() for w in self.model.get_weights()]
        self.kernels[epoch], self.masks[epoch] = {}, {}
        for name in self.names:
            layer = self.model.get_layer(name)
            self.kernels[epoch][name] = numpy(layer.kernel).copy()
            self.masks[epoch][name] = held_mask(layer, "kernel")


def oracle_shares(scores, caps, budget):
    """softmax(S / s) of `budget`, capped, excess redistributed (reals)."""
    s = np.asarray(scores, float)
    caps = np.asarray(caps, float)
    logits = s.sum() / s
    shares, free, left = np.zeros(len(s)), np.ones(len(s), bool), float(budget)
    while free.any():
        w = np.exp(logits[free] - logits[free].max())
        share = left * w / w.sum()
        over = share > caps[free]
        if not over.any():
            shares[free] = share
            break
        idx = np.flatnonzero(free)[over]
        shares[idx] = caps[idx]
        left -= caps[idx].sum()
        free[idx] = False
    return shares


def frozen(x, **kwargs):
    """On a frozen model: single kernel weights, the paper's zero, no trial
    (the rounds' pruning, not the pre-check, is under test)."""
    kwargs = {
        "trial": False,
        "interval": 1,
        "recalibrate": False,
        "tolerance": 1e6,
        "verbose": 0,
        "granularity": "weights",
        "zero_entropy": 1e-6,
        **kwargs,
    }
    return kc.NEPENTHECallback(x, **kwargs)


class TestRounds(TestCase):
    def test_budget_follows_the_formula(self):
        model = entropy_model()
        x, y = inputs_and_targets(model)
        names = list(KERNELS.values())
        entropy = {s.name: s.entropy for s in kc.activation_statistics(model, x)}
        seen = Recorder(names)
        nep = frozen(x, prune_fraction=0.3)
        fit(model, (x, y), [seen, nep], epochs=4)
        # The first round: the planted layers have entropy 0 and are
        # linearized, nothing pruned; the measured entropy is
        # activation_statistics'.
        linearized = nep.events[0]
        assert linearized["action"] == "linearized"
        assert sorted(linearized["layers"]) == ["alive", "split"]
        assert linearized["pruned"] == {}
        for name, h in linearized["entropy"].items():
            assert abs(h - entropy[name]) < 1e-6
        rounds = [e for e in nep.events if e["action"] == "pruned"]
        assert len(rounds) == 2
        first = rounds[0]
        for r, event in enumerate(rounds):
            epoch = event["epoch"] - 1
            scored = list(event["score"])
            assert set(scored) == {"toss1", "mostly", "toss2"}
            expected = {}
            for act in scored:
                kernel = seen.kernels[epoch][KERNELS[act]]
                free = ~seen.masks[epoch][KERNELS[act]]
                assert event["remaining"][act] == int(free.sum())
                expected[act] = event["entropy"][act] * np.mean(np.abs(kernel[free]))
                self.assert_close(event["score"][act], expected[act], rtol=1e-5)
            caps = [event["remaining"][a] for a in scored]
            budget = round(0.3 * sum(caps))
            assert event["budget"] == budget
            # Each share capped at half of what the layer has left.
            halves = {a: math.ceil(0.5 * event["remaining"][a]) for a in scored}
            assert event["caps"] == halves
            assert event["pruned"] == kc.allocate_budget(expected, halves, budget)
            assert sum(event["pruned"].values()) == budget
            assert all(event["pruned"][a] <= halves[a] for a in scored)
            caps = [halves[a] for a in scored]
            shares = oracle_shares([expected[a] for a in scored], caps, budget)
            for a, share in zip(scored, shares):
                assert abs(event["pruned"][a] - share) < 1.0
            # What was pruned: the smallest remaining |w|, now masked.
            for act in scored:
                name = KERNELS[act]
                new = nep.model.get_layer(name)
                mask = held_mask(new, "kernel") if r == len(rounds) - 1 else None
                if mask is not None:
                    before = seen.masks[epoch][name]
                    assert int((mask & ~before).sum()) == event["pruned"][act]
        # The lower-entropy layer loses more.
        assert first["pruned"]["mostly"] > first["pruned"]["toss1"]

    def test_no_round_masks_more_than_half_of_a_layer(self):
        for granularity in ("weights", "channels"):
            model = trainable_model()
            x, y = regression_data()
            nep = kc.NEPENTHECallback(
                x,
                prune_fraction=0.95,
                interval=1,
                tolerance=1e6,
                precheck=False,
                granularity=granularity,
                verbose=0,
            )
            fit(model, (x, y), [nep], epochs=4)
            rounds = [e for e in nep.events if e["action"] == "pruned"]
            assert len(rounds) >= 2, nep.events
            for event in rounds:
                for act, count in event["pruned"].items():
                    left = event["remaining"][act]  # channels, or weights
                    if event["where"][act] == "channels":
                        kernel = model.get_layer(event["kernels"][act]).kernel
                        assert left <= kernel.shape[-1]
                    assert count <= math.ceil(0.5 * left), (granularity, event)
                assert all(v < 1.0 for v in event["sparsity"].values()), event

    def test_masks_hold_through_fit_and_save_load(self, tmp_path):
        model = trainable_model()
        x, y = regression_data()
        names = ["d0", "d1", "d2"]
        after = Recorder(names)
        path = str(tmp_path / "mid.keras")
        nep = kc.NEPENTHECallback(
            x,
            interval=1,
            tolerance=1e6,
            granularity="weights",
            per_layer_logs=True,
            trial=False,
            verbose=0,
        )
        checkpoint = keras.callbacks.ModelCheckpoint(path)
        history = fit(model, (x, y), [nep, after, checkpoint], epochs=4)
        masks = after.masks
        for epoch in range(1, 4):
            for name in names:
                # Masks only grow, and the masked entries stay exactly zero.
                assert np.all(masks[epoch][name] >= masks[epoch - 1][name])
                np.testing.assert_array_equal(
                    after.kernels[epoch][name][masks[epoch][name]], 0.0
                )
        assert masks[0]["d0"].any()
        overall = history.history["nepenthe_sparsity"]
        assert overall[0] > 0 and overall == sorted(overall)
        assert "nepenthe_sparsity_d1" in history.history
        assert "nepenthe_entropy_a1" in history.history
        loaded = keras.saving.load_model(path)
        for name in names:
            np.testing.assert_array_equal(
                held_mask(loaded.get_layer(name), "kernel"), masks[3][name]
            )
        loaded.compile(keras.optimizers.Adam(1e-2), "mse")
        loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)
        for name in names:
            kernel = numpy(loaded.get_layer(name).kernel)
            np.testing.assert_array_equal(kernel[masks[3][name]], 0.0)

    def test_zero_entropy_layers_are_linearized_and_merged(self):
        model = entropy_model()
        x, y = inputs_and_targets(model)
        nep = frozen(x, prune_fraction=0.2)
        fit(model, (x, y), [nep], epochs=2)
        assert sorted(nep.linearized) == ["alive", "split"]
        assert model.get_layer("alive").is_locked
        gamma = numpy(model.get_layer("split_bn").gamma)
        np.testing.assert_array_equal(gamma[1::2], 0.0)  # never ON: zeroed
        expected = numpy(model(x))
        small, report = kc.surgery(model, return_report=True)
        self.assert_close(small(x), expected, atol=1e-4)
        assert report.after.depth == report.before.depth - 2
        assert not any(
            isinstance(getattr(layer, "kernel_constraint", None), kc.ZeroMask)
            for layer in small.layers
        )

    def test_no_batchnorm_off_channels_are_zeroed_in_the_kernel(self):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        dense = layers.Dense(4, name="d")
        act = kc.CollapsiblePReLU(name="act")
        h = act(dense(inputs))
        model = keras.Model(inputs, layers.Dense(2, name="head")(h))
        model.compile(keras.optimizers.SGD(0.0), "mse")
        x = np.abs(np.random.default_rng(0).standard_normal((64, 4))).astype("float32")
        # Channels 0, 1 always ON, 2, 3 always OFF on positive inputs.
        kernel = np.array([[1, 1, -1, -1]] * 4, "float32")
        dense.set_weights([kernel, np.array([0.1, 0.1, -0.1, -0.1], "float32")])
        y = numpy(model(x))
        nep = frozen(x)
        fit(model, (x, y), [nep], epochs=2)
        assert nep.linearized == ["act"]
        np.testing.assert_array_equal(numpy(dense.kernel)[:, 2:], 0.0)
        np.testing.assert_array_equal(numpy(dense.bias)[2:], 0.0)
        small = kc.surgery(model)
        self.assert_close(small(x), y, atol=1e-5)


class TestGuard(TestCase):
    def test_rollback_restores_weights_and_masks(self):
        class Probe(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs["probe"] = 1.0 if epoch == 0 else 10.0

        model = entropy_model()
        x, y = inputs_and_targets(model)
        before = Recorder(list(KERNELS.values()))
        nep = kc.NEPENTHECallback(
            x,
            interval=1,
            monitor="probe",
            precheck=False,  # the guard's rollback, not the pre-check's
            mode="min",
            patience=1,
            recalibrate=False,
            candidates=["toss1", "mostly", "toss2"],
            verbose=0,
        )
        fit(model, (x, y), [Probe(), before, nep], epochs=3)
        actions = [e["action"] for e in nep.events]
        assert actions == ["pruned", "rolled back", "stopped"]
        assert nep.rounds[0]["where"] == dict.fromkeys(
            ["toss1", "mostly", "toss2"], "channels"
        )
        assert sum(nep.rounds[0]["pruned"].values()) > 0
        assert nep.rollbacks == 1 and nep.linearized == [] and nep.kept == []
        assert nep.rounds[0]["rolled_back"]
        for act in ("toss1", "mostly", "toss2"):
            bn = model.get_layer(f"{act}_bn")
            for weight in ("gamma", "beta"):
                assert getattr(bn, weight).constraint is None
                assert getattr(bn, f"{weight}_constraint") is None
        assert not model.get_layer("alive").is_locked
        for restored, snapshot in zip(model.get_weights(), before.weights[0]):
            np.testing.assert_array_equal(restored, snapshot)
        assert "rolled back" in nep.table()

    def test_rolled_back_rounds_halve_the_next_fraction(self):
        class Probe(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs["probe"] = 1.0 if epoch == 0 else 10.0 * epoch

        model = trainable_model()
        x, y = regression_data()
        nep = kc.NEPENTHECallback(
            x,
            interval=1,
            monitor="probe",
            mode="min",
            recalibrate=False,
            precheck=False,
            granularity="weights",
            verbose=0,
        )
        after = Recorder(["d0", "d1", "d2"])
        history = fit(model, (x, y), [Probe(), nep, after], epochs=4)
        fractions = [r["prune_fraction"] for r in nep.rounds]
        assert fractions == [0.5, 0.25, 0.125]
        assert [r["rolled_back"] for r in nep.rounds] == [True, True, True]
        assert history.history["nepenthe_prune_fraction"] == [0.5, 0.25, 0.125, 0.0625]
        # Each round prunes its fraction of the restored (unpruned) kernels.
        for epoch, fraction in enumerate(fractions):
            masked = sum(int(after.masks[epoch][n].sum()) for n in after.names)
            size = sum(after.masks[epoch][n].size for n in after.names)
            assert abs(masked - fraction * size) <= 1
        assert nep.events[-1]["action"] == "stopped"  # patience 3
        assert kc.sparsity(model).overall == 0.0

    def test_accuracy_guard_undoes_a_round_that_costs_accuracy(self):
        # A classifier that learned its task; pruning 95% of it costs accuracy
        # on the validation sample, and the round is undone.
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((512, 6)).astype("float32")
        y = (x @ rng.standard_normal(6) > 0).astype("int32")
        inputs = keras.Input((6,))
        h = kc.CollapsiblePReLU(name="a")(layers.Dense(16, name="d")(inputs))
        model = keras.Model(inputs, layers.Dense(2, name="head")(h))
        model.compile(
            keras.optimizers.Adam(1e-2),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x, y, epochs=30, batch_size=64, verbose=0)
        trained = model.get_weights()
        model.compile(keras.optimizers.SGD(0.0), model.loss, metrics=["accuracy"])
        nep = kc.NEPENTHECallback(
            x,
            validation_data=(x, y),
            prune_fraction=0.95,
            interval=1,
            patience=1,
            precheck=False,  # the guard's rollback, not the pre-check's
            granularity="weights",
            verbose=0,
        )
        fit(model, (x, y), [nep], epochs=3)
        assert nep.monitored == "accuracy"
        assert [e["action"] for e in nep.events] == ["pruned", "rolled back", "stopped"]
        rolled = nep.events[1]
        assert rolled["value"] < rolled["best"] - 0.02
        for restored, original in zip(model.get_weights(), trained):
            np.testing.assert_array_equal(restored, original)
        assert kc.sparsity(model).overall == 0.0


class TestRecords(TestCase):
    def test_history_table_plot_and_verbose(self, capsys):
        model = entropy_model()
        x, y = inputs_and_targets(model)
        nep = frozen(x, verbose=1)
        fit(model, (x, y), [nep], epochs=4)
        out = capsys.readouterr().out
        assert "NEPENTHECallback linearized" in out and "pruned" in out
        h = nep.history()
        assert h["epoch"] == [1, 2, 3]
        assert h["entropy"]["alive"][1] is None  # linearized: not measured
        assert h["sparsity"]["toss1"][2] > h["sparsity"]["toss1"][1] > 0
        table = nep.table()
        assert "epoch 1" in table and "toss1" in table and "linearized" in table
        pytest.importorskip("matplotlib")
        fig = nep.plot()
        assert len(fig.axes) == 2


class TestBadInput(TestCase):
    @pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, True, "half", None])
    def test_prune_fraction(self, fraction):
        with pytest.raises(ValueError, match="prune_fraction"):
            kc.NEPENTHECallback(np.zeros((4, 6)), prune_fraction=fraction)

    def test_no_data(self):
        with pytest.raises(ValueError, match="data"):
            kc.NEPENTHECallback(None)

    def test_ramp_epochs(self):
        with pytest.raises(ValueError, match="ramp_epochs"):
            kc.NEPENTHECallback(np.zeros((4, 6)), ramp_epochs=1)

    def test_per_decision_is_the_prune_fraction(self):
        for pace in (2, 0.5):
            with pytest.raises(ValueError, match="prune_fraction.*per_decision"):
                kc.NEPENTHECallback(np.zeros((4, 6)), per_decision=pace)

    def test_validation_rows_that_do_not_match(self):
        model = trainable_model()
        x, y = regression_data()
        nep = kc.NEPENTHECallback(x, validation_data=(x, y[:10]), verbose=0)
        with pytest.raises(ValueError, match=r"x: 256 rows, y: 10 rows"):
            fit(model, (x, y), [nep], epochs=1)

    def test_no_prunable_candidate(self):
        inputs = keras.Input((8, 8, 2))
        h = layers.Conv2D(4, 3, name="conv")(inputs)
        h = kc.CollapsiblePReLU(name="act")(layers.MaxPooling2D()(h))
        h = layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inputs, layers.Dense(1)(h))
        model.compile("sgd", "mse")
        x = np.zeros((8, 8, 8, 2), "float32")
        weights = [w.copy() for w in model.get_weights()]
        nep = kc.NEPENTHECallback(x, verbose=0)
        with pytest.raises(ValueError, match="no collapsible activation.*prune"):
            model.fit(x, np.zeros((8, 1)), epochs=2, verbose=0, callbacks=[nep])
        for a, b in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_layers_with_nothing_left_leave_the_share(self):
        # A kernel pruned whole makes its channels constant: entropy 0, and
        # (here) so is everything after it. They are linearized, not pruned.
        model = trainable_model()
        x, y = regression_data()
        kc.prune_by_fraction(model, {"d0": 1.0})
        nep = kc.NEPENTHECallback(
            x, interval=1, tolerance=1e6, granularity="weights", verbose=0
        )
        fit(model, (x, y), [nep], epochs=3)
        first = nep.events[0]
        assert first["action"] == "linearized" and "a0" in first["layers"]
        assert first["entropy"]["a0"] == 0.0 and first["pruned"] == {}
        for event in nep.events:
            assert not event.get("pruned", {}).get("a0"), event
        assert kc.sparsity(model).layers["d0"] == 1.0


def planted_model(plants, seed=0):
    """Dense(8) -> BN -> CollapsiblePReLU per `(beta, gamma)` plant, frozen,
    BN statistics re-estimated on the inputs (each pre-activation about
    N(beta, gamma^2))."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = inputs
    for name, (beta, gamma) in plants.items():
        h = layers.Dense(8, name=f"{name}_dense")(h)
        bn = layers.BatchNormalization(momentum=1.0, name=f"{name}_bn")
        h = kc.CollapsiblePReLU(name=name)(bn(h))
        set_bn(bn, np.broadcast_to(gamma, (8,)), np.broadcast_to(beta, (8,)))
    model = keras.Model(inputs, layers.Dense(2, name="head")(h))
    kc.recalibrate_batchnorm(model, inputs_and_targets(None)[0], in_place=True)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    return model


class TestWherePruningActs(TestCase):
    def test_kernel_pruning_behind_a_batchnorm_leaves_the_entropy(self):
        # The diagnosis: the BN re-normalizes what is left of a kernel, so a
        # channel's states move only when its whole kernel column is gone.
        model = planted_model({"toss": (0.0, 1.0)})
        x, _ = inputs_and_targets(None)
        before = kc.activation_statistics(model, x)["toss"].entropy
        kc.prune_by_fraction(model, {"toss_dense": 0.6})
        mask = held_mask(model.get_layer("toss_dense"), "kernel")
        whole = mask.all(axis=0)
        kc.recalibrate_batchnorm(model, x, in_place=True)
        after = kc.activation_statistics(model, x)["toss"]
        assert before > 0.95
        # Channels with some kernel left stay coin tosses; only whole
        # columns (constant channels) reach entropy 0.
        assert np.all(binary_entropy(after.p_on[~whole]) > 0.8), after.p_on
        np.testing.assert_array_equal(binary_entropy(after.p_on[whole]), 0.0)
        assert after.entropy > 0.8 * (1 - whole.mean())

    def test_channels_pruned_at_the_batchnorm_against_an_oracle(self):
        plants = {"toss1": (0.0, np.linspace(0.5, 1.2, 8)), "mostly": (0.8, 1.0)}
        model = planted_model(plants)
        x, y = inputs_and_targets(model)
        stats = kc.activation_statistics(model, x)
        gammas = {a: numpy(model.get_layer(f"{a}_bn").gamma).copy() for a in plants}
        nep = kc.NEPENTHECallback(
            x, interval=1, recalibrate=False, tolerance=1e6, trial=False, verbose=0
        )
        fit(model, (x, y), [nep], epochs=3)
        first, second = nep.rounds
        assert first["where"] == {"toss1": "channels", "mostly": "channels"}
        # Budget in channels: round(0.5 * 16) shared by the softmax, capped
        # at half of each layer's channels.
        scores = {}
        for act in plants:
            # Behind a BN: mean |gamma| (the kernel's scale means nothing).
            scores[act] = stats[act].entropy * np.mean(np.abs(gammas[act]))
            self.assert_close(first["score"][act], scores[act], rtol=1e-5)
        assert first["remaining"] == {"toss1": 8, "mostly": 8}
        assert first["caps"] == {"toss1": 4, "mostly": 4}
        assert first["budget"] == 8
        assert first["pruned"] == kc.allocate_budget(scores, first["caps"], 8)
        # Which channels: the smallest |gamma| first (toss1's are planted
        # increasing); their gamma and beta held at exactly zero.
        bn = model.get_layer("toss1_bn")
        held = held_mask(bn, "gamma")
        k1 = first["pruned"]["toss1"]
        expected = np.zeros(8, bool)
        expected[:k1] = True
        np.testing.assert_array_equal(held | expected, held)  # first round's
        np.testing.assert_array_equal(held, held_mask(bn, "beta"))
        np.testing.assert_array_equal(numpy(bn.gamma)[held], 0.0)
        # The entropy a round later (frozen weights): pruned channels at 0,
        # the others as they were (NumPy oracle on the first measurement).
        p_on = stats["toss1"].p_on.copy()
        p_on[expected] = 0.0
        oracle = float(np.mean(binary_entropy(p_on)))
        self.assert_close(second["entropy"]["toss1"], oracle, atol=1e-6)
        assert second["entropy"]["toss1"] < stats["toss1"].entropy
        assert nep._overall() > 0

    def test_a_near_zero_entropy_layer_is_linearized_its_off_channels_zeroed(self):
        # ON channels N(2, 1): P(ON) = 0.977; OFF channels N(-2, 1). Entropy
        # about 0.16 bits: under H(0.05) = 0.286, above the paper's zero.
        plants = {"near": ([2.0, -2.0] * 4, 1.0), "mostly": (0.8, 1.0)}
        model = planted_model(plants)
        x, y = inputs_and_targets(model)
        stats = kc.activation_statistics(model, x)
        assert 0.05 < stats["near"].entropy < 0.286 < stats["mostly"].entropy
        strict = kc.NEPENTHECallback(
            x,
            zero_entropy=1e-6,
            interval=1,
            recalibrate=False,
            tolerance=1e6,
            trial=False,
            verbose=0,
        )
        fit(model, (x, y), [strict], epochs=2)
        assert strict.linearized == []
        model = planted_model(plants)
        expected_out = numpy(model(x))
        nep = kc.NEPENTHECallback(
            x, interval=1, recalibrate=False, tolerance=1e6, trial=False, verbose=0
        )
        fit(model, (x, y), [nep], epochs=2)
        assert nep.linearized == ["near"]
        assert nep.events[0]["action"] == "linearized"
        off = stats["near"].p_on <= 0.05
        np.testing.assert_array_equal(off, [False, True] * 4)
        assert nep.events[0]["channels_off"] == {"near": 4}
        gamma = numpy(model.get_layer("near_bn").gamma)
        np.testing.assert_array_equal(gamma[off], 0.0)
        assert np.all(gamma[~off] != 0.0)
        # Surgery merges it and computes what the linearized model computes.
        linearized_out = numpy(model(x))
        small, report = kc.surgery(model, return_report=True)
        self.assert_close(small(x), linearized_out, atol=1e-4)
        assert report.after.depth < report.before.depth
        # The approximation: close to the original on most rows.
        err = np.abs(linearized_out - expected_out).max(axis=1)
        assert np.mean(err < 0.5 * np.abs(expected_out).max()) > 0.8

    def test_depthwise_weights_capped_per_channel(self):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6, 6, 3))
        h = layers.DepthwiseConv2D(3, padding="same", name="dw")(inputs)
        h = kc.CollapsiblePReLU(name="act")(h)
        h = layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inputs, layers.Dense(2, name="head")(h))
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        x = np.random.default_rng(0).standard_normal((64, 6, 6, 3)).astype("float32")
        y = np.random.default_rng(1).standard_normal((64, 2)).astype("float32")
        seen = Recorder(["dw"])
        nep = kc.NEPENTHECallback(
            x,
            prune_fraction=0.9,
            interval=1,
            tolerance=1e6,
            precheck=False,
            granularity="weights",
            verbose=0,
        )
        fit(model, (x, y), [seen, nep], epochs=4)
        rounds = [e for e in nep.events if e["action"] == "pruned"]
        assert len(rounds) >= 2
        for event in rounds:
            epoch = event["epoch"] - 1
            before = seen.masks[epoch]["dw"].reshape(9, 3)
            after = (
                seen.masks[epoch + 1]["dw"].reshape(9, 3)
                if epoch + 1 in seen.masks
                else held_mask(model.get_layer("dw"), "kernel").reshape(9, 3)
            )
            left = (~before).sum(axis=0)
            new = (after & ~before).sum(axis=0)
            # 9 weights a channel: never more than half of what it has left.
            assert np.all(new <= np.ceil(0.5 * left)), (new, left)
            assert np.all(after.sum(axis=0) < 9)
            assert event["pruned"]["act"] == int(new.sum())

    def test_per_layer_logs_are_an_option(self):
        model = trainable_model()
        x, y = regression_data()
        quiet = kc.NEPENTHECallback(x, interval=1, tolerance=1e6, verbose=0)
        history = fit(model, (x, y), [quiet], epochs=2)
        assert not any(
            k.startswith(("nepenthe_sparsity_", "nepenthe_entropy_"))
            for k in history.history
        )
        assert "nepenthe_sparsity" in history.history
        model = trainable_model()
        loud = kc.NEPENTHECallback(
            x, interval=1, tolerance=1e6, per_layer_logs=True, verbose=0
        )
        history = fit(model, (x, y), [loud], epochs=2)
        assert "nepenthe_sparsity_d1" in history.history
        assert "nepenthe_entropy_a1" in history.history
        with pytest.raises(ValueError, match="per_layer_logs"):
            kc.NEPENTHECallback(x, per_layer_logs="yes")
        with pytest.raises(ValueError, match="granularity"):
            kc.NEPENTHECallback(x, granularity="rows")

    def test_depth_objective_prunes_one_merge_unit_at_a_time(self):
        model = trainable_model()
        x, y = regression_data()
        units = kc.merge_units(model)
        nep = kc.NEPENTHECallback(
            x,
            interval=1,
            tolerance=1e6,
            precheck=False,
            objective="depth",
            verbose=0,
        )
        fit(model, (x, y), [nep], epochs=4)
        rounds = [e for e in nep.events if e["action"] == "pruned"]
        assert rounds
        members = [set(u.activations) for u in units.for_objective("depth")]
        for event in rounds:
            touched = {a for a, n in event["pruned"].items() if n}
            assert touched and any(touched <= m for m in members), (touched, members)


class TestTrial(TestCase):
    """No layer at `zero_entropy`: the lowest-entropy one is linearized as a
    trial, kept when the pre-check accepts it, else the round prunes."""

    plants = {"toss1": (0.0, 1.0), "mostly": (0.8, 1.0), "toss2": (0.1, 1.0)}

    def noisy(self, y):
        """Targets the model misses by about 1 (a loss the pre-check's
        relative tolerance can scale)."""
        noise = np.random.default_rng(3).standard_normal(y.shape)
        return (y + noise).astype("float32")

    def test_the_lowest_entropy_layer_is_tried_and_kept(self):
        model = planted_model(self.plants)
        x, y = inputs_and_targets(model)
        stats = kc.activation_statistics(model, x)
        entropy = {name: stats[name].entropy for name in self.plants}
        lowest = min(entropy, key=entropy.get)
        assert lowest == "mostly" and entropy["mostly"] > 0.286  # no zero
        y = self.noisy(y)
        nep = kc.NEPENTHECallback(
            x, (x, y), interval=1, recalibrate=False, tolerance=1e6, verbose=0
        )
        fit(model, (x, y), [nep], epochs=2)
        first = nep.events[0]
        assert first["action"] == "linearized" and first["layers"] == [lowest]
        assert first["trial"] is True and first["pruned"] == {}
        assert nep.rounds[0]["trial"] is True
        assert nep.linearized[0] == lowest
        # No kernel was pruned for it, and the surgery computes the same.
        assert nep._overall() == 0.0
        linearized_out = numpy(model(x))
        small, report = kc.surgery(model, return_report=True)
        self.assert_close(small(x), linearized_out, atol=1e-4)
        assert report.after.depth < report.before.depth

    def test_a_refused_trial_stays_a_candidate_and_the_decision_prunes(self):
        model = planted_model(self.plants)
        x, y = inputs_and_targets(model)
        # Nothing may change the outputs: the trial is refused at once, and
        # the same decision tries pruning (refused too, at half the fraction).
        nep = kc.NEPENTHECallback(
            x,
            (x, y),
            interval=1,
            recalibrate=False,
            precheck=1e-9,
            tolerance=1e6,
            verbose=0,
        )
        fit(model, (x, y), [nep], epochs=3)
        refused = [e for e in nep.events if e["action"] == "refused"]
        epochs = sorted({e["epoch"] for e in refused})
        assert epochs == [1, 2]  # both decisions, no epoch spent on a change
        for epoch in epochs:
            tries = [e["layers"] for e in refused if e["epoch"] == epoch]
            # The trial first (the lowest entropy), then prune rounds.
            assert tries[0] == ["mostly"] and tries[1:] == [[], []]
        assert nep.kept == [] and nep.linearized == []
        assert [r["trial"] for r in nep.rounds if "trial" in r][:1] == [True]
        assert nep._overall() == 0.0  # every refused round undone
        np.testing.assert_allclose(numpy(model(x)), y, atol=1e-5)

    def test_trial_off_keeps_the_threshold_alone(self):
        model = planted_model(self.plants)
        x, y = inputs_and_targets(model)
        y = self.noisy(y)
        nep = kc.NEPENTHECallback(
            x,
            (x, y),
            interval=1,
            recalibrate=False,
            tolerance=1e6,
            trial=False,
            verbose=0,
        )
        fit(model, (x, y), [nep], epochs=2)
        assert nep.events[0]["action"] == "pruned"
        assert nep.linearized == []

    def test_trial_must_be_a_bool(self):
        with pytest.raises(ValueError, match="trial"):
            kc.NEPENTHECallback(np.zeros((4, 6)), trial="yes")
