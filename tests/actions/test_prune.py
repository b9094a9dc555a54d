"""Pruning: which kernels, how much (NEPENTHE's budget), L1 magnitude, and the
surgery of a pruned model."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.masks import ZeroMask
from keras_collapse.masks import held_mask
from tests.testing import TestCase

layers = keras.layers


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def cnn():
    """conv -> BN -> act, conv -> act, depthwise -> act, pool -> act,
    Add -> act, dense -> act."""
    x = keras.Input((8, 8, 3))
    h = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv_bn")(x)
    h = layers.BatchNormalization(name="bn")(h)
    h = kc.CollapsibleActivation(name="act_bn")(h)
    h = layers.Conv2D(8, 1, name="conv")(h)
    h = kc.CollapsibleActivation(name="act_conv")(h)
    h = layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = kc.CollapsibleActivation(name="act_dw")(h)
    h = layers.MaxPooling2D(name="pool")(h)
    pooled = kc.CollapsibleActivation(name="act_pool")(h)
    h = layers.Add(name="add")([pooled, layers.Conv2D(8, 1, name="side")(pooled)])
    h = kc.CollapsibleActivation(name="act_add")(h)
    h = layers.GlobalAveragePooling2D()(h)
    h = kc.CollapsibleActivation(name="act_fc")(layers.Dense(6, name="fc")(h))
    return keras.Model(x, layers.Dense(3, name="head")(h), name="cnn")


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            weights = [rng.normal(0, 0.5, w.shape) for w in layer.get_weights()]
            if isinstance(layer, layers.BatchNormalization):
                weights[3] = rng.uniform(0.5, 1.5, weights[3].shape)  # variance
            layer.set_weights(weights)
    return model


PRUNABLE = {"act_bn": "conv_bn", "act_conv": "conv", "act_dw": "dw", "act_fc": "fc"}


def oracle_prune(kernel, held, fraction):
    """Reference: the k smallest |w| among entries not held, ties by index."""
    free = [i for i in range(kernel.size) if not held.ravel()[i]]
    k = int(np.floor(fraction * len(free) + 0.5))
    ranked = sorted(free, key=lambda i: (abs(float(kernel.ravel()[i])), i))
    mask = held.ravel().copy()
    mask[ranked[:k]] = True
    return mask.reshape(kernel.shape)


class TestPrunableLayers(TestCase):
    def test_kernels_feeding_activations(self):
        found = {p.activation.name: p for p in kc.prunable_layers(cnn())}
        assert set(found) == set(PRUNABLE) | {"act_pool", "act_add"}
        for act, layer in PRUNABLE.items():
            assert found[act].layer.name == layer and found[act].reason is None
        assert found["act_bn"].batchnorm.name == "bn"
        assert found["act_pool"].layer is None and "pool" in found["act_pool"].reason
        assert found["act_add"].layer is None and "'add'" in found["act_add"].reason

    def test_other_readers_and_shared_layers_are_skipped(self):
        x = keras.Input((4,))
        h = layers.Dense(4, name="two_readers")(x)
        a = kc.CollapsibleActivation(name="a")(h)
        shared = layers.Dense(4, name="shared")
        b = kc.CollapsibleActivation(name="b")(shared(a))
        c = kc.CollapsibleActivation(name="c")(shared(b))
        model = keras.Model(x, [layers.Add()([h, c])])
        found = {p.activation.name: p for p in kc.prunable_layers(model)}
        assert "other readers" in found["a"].reason
        assert "shared" in found["b"].reason and "shared" in found["c"].reason
        assert all(p.layer is None for p in found.values())


class TestPruneByFraction(TestCase):
    def test_prunes_smallest_magnitudes_of_the_remaining_and_accumulates(self):
        model = randomize(cnn())
        fc = model.get_layer("fc")
        kernel = numpy(fc.kernel).copy()
        kernel.ravel()[:6] = 0.25  # ties: broken by index
        fc.kernel.assign(kernel)
        held = np.zeros(kernel.shape, bool)
        for fraction in (0.3, 0.5, 0.0, 1.0):
            expected = oracle_prune(kernel, held, fraction)
            (done,) = kc.prune_by_fraction(model, {"fc": fraction})
            mask = held_mask(fc, "kernel")
            np.testing.assert_array_equal(mask, expected)
            assert done.pruned == (expected & ~held).sum()
            assert done.remaining == (~expected).sum()
            now = numpy(fc.kernel)
            np.testing.assert_array_equal(now[mask], 0.0)
            np.testing.assert_array_equal(now[~mask], kernel[~mask])
            held = expected
        assert held.all()

    def test_every_kind_of_kernel(self):
        model = randomize(cnn())
        done = kc.prune_by_fraction(model, {name: 0.5 for name in PRUNABLE.values()})
        for record in done:
            layer = model.get_layer(record.layer)
            size = int(np.prod(layer.kernel.shape))
            assert record.pruned == int(np.floor(0.5 * size + 0.5))
            assert held_mask(layer, "kernel").sum() == record.pruned
        stats = kc.sparsity(model)
        assert set(stats.layers) == set(PRUNABLE.values())
        total = sum(stats.sizes.values())
        assert stats.overall == pytest.approx(sum(r.pruned for r in done) / total)
        assert stats.remaining["fc"] == stats.sizes["fc"] - done[-1].pruned

    def test_undo_restores_constraint_and_values(self):
        model = randomize(cnn())
        conv = model.get_layer("conv")
        conv.kernel.constraint = conv.kernel_constraint = keras.constraints.NonNeg()
        kernel = numpy(conv.kernel).copy()
        (first,) = kc.prune_by_fraction(model, {"conv": 0.25})
        (second,) = kc.prune_by_fraction(model, {"conv": 0.25})
        second.undo()
        assert held_mask(conv, "kernel").sum() == first.pruned
        first.undo()
        assert isinstance(conv.kernel.constraint, keras.constraints.NonNeg)
        assert isinstance(conv.kernel_constraint, keras.constraints.NonNeg)
        np.testing.assert_array_equal(numpy(conv.kernel), kernel)
        assert kc.sparsity(model).overall == 0.0

    def test_undo_out_of_order_restores_values_and_masks(self):
        # Issue 23: undoing the first of two records restored its values
        # but left its entries masked (the mask of the second came back).
        model = randomize(cnn())
        conv = model.get_layer("conv")
        conv.kernel.constraint = conv.kernel_constraint = keras.constraints.NonNeg()
        kernel = numpy(conv.kernel).copy()
        (first,) = kc.prune_by_fraction(model, {"conv": 0.25})
        mask_first = held_mask(conv, "kernel")
        (second,) = kc.prune_by_fraction(model, {"conv": 0.25})
        mask_second = held_mask(conv, "kernel") & ~mask_first
        first.undo()
        np.testing.assert_array_equal(held_mask(conv, "kernel"), mask_second)
        assert conv.kernel_constraint is conv.kernel.constraint
        np.testing.assert_array_equal(
            numpy(conv.kernel)[mask_first], kernel[mask_first]
        )
        np.testing.assert_array_equal(numpy(conv.kernel)[mask_second], 0.0)
        # The remaining mask still holds its zeros, over the inner NonNeg.
        held = conv.kernel.constraint
        assert isinstance(held, ZeroMask) and isinstance(
            held.inner, keras.constraints.NonNeg
        )
        second.undo()
        assert isinstance(conv.kernel.constraint, keras.constraints.NonNeg)
        assert isinstance(conv.kernel_constraint, keras.constraints.NonNeg)
        np.testing.assert_array_equal(numpy(conv.kernel), kernel)
        assert kc.sparsity(model).overall == 0.0
        second.undo()  # twice: nothing more
        assert isinstance(conv.kernel.constraint, keras.constraints.NonNeg)

    @pytest.mark.parametrize("name", ["dw", "conv"])
    def test_channel_cap_against_an_oracle(self, name):
        model = randomize(cnn())
        layer = model.get_layer(name)
        shape = tuple(layer.kernel.shape)
        channels = shape[-2] * shape[-1] if name == "dw" else shape[-1]
        kc.prune_by_fraction(model, {name: 0.3})
        held = held_mask(layer, "kernel")
        kernel = numpy(layer.kernel).copy()
        count = int((~held).sum() * 0.7)
        (done,) = kc.prune_by_count(model, {name: count}, channel_cap=0.5)
        # Oracle: walk the free entries by (|w|, index); take one while its
        # channel (flat index % channels) has taken < ceil(0.5 * its free).
        free = [i for i in range(kernel.size) if not held.ravel()[i]]
        ranked = sorted(free, key=lambda i: (abs(float(kernel.ravel()[i])), i))
        left = (~held.reshape(-1, channels)).sum(axis=0)
        allowance = np.ceil(0.5 * left)
        taken, expected = np.zeros(channels), []
        for i in ranked:
            if len(expected) < count and taken[i % channels] < allowance[i % channels]:
                taken[i % channels] += 1
                expected.append(i)
        mask = held.ravel().copy()
        mask[expected] = True
        np.testing.assert_array_equal(held_mask(layer, "kernel").ravel(), mask)
        assert done.pruned == len(expected) <= count
        new = (held_mask(layer, "kernel") & ~held).reshape(-1, channels).sum(axis=0)
        assert np.all(new <= allowance) and np.all(new <= np.ceil(0.5 * left))
        # No channel loses its last weights in one call.
        assert np.all(
            held_mask(layer, "kernel").reshape(-1, channels).sum(axis=0)
            < len(held.reshape(-1, channels))
        )
        if name == "dw":  # 9 weights a channel: the cap binds (70 % asked)
            assert done.pruned < count

    def test_channel_cap_bad_input(self):
        for cap in (0, 1.5, True, "half"):
            match = r"`channel_cap` must be a number in \(0, 1\] or None"
            with pytest.raises(ValueError, match=match):
                kc.prune_by_count(cnn(), {"dw": 1}, channel_cap=cap)

    def test_masks_hold_through_fit(self):
        model = randomize(cnn())
        model.compile(keras.optimizers.Adam(0.05), "mse")
        x, y = self.random_inputs((16, 8, 8, 3)), self.random_inputs((16, 3))
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
        kc.prune_by_fraction(model, {"conv_bn": 0.5, "dw": 0.5, "fc": 0.5})
        model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        for name in ("conv_bn", "dw", "fc"):
            layer = model.get_layer(name)
            mask = held_mask(layer, "kernel")
            np.testing.assert_array_equal(numpy(layer.kernel)[mask], 0.0)

    def test_inside_fit(self):
        model = randomize(cnn())
        model.compile(keras.optimizers.Adam(0.05), "mse")
        x, y = self.random_inputs((16, 8, 8, 3)), self.random_inputs((16, 3))

        class Prune(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 0:
                    kc.prune_by_fraction(self.model, {"conv": 0.5, "fc": 0.5})

        model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[Prune()])
        for name in ("conv", "fc"):
            layer = model.get_layer(name)
            mask = held_mask(layer, "kernel")
            assert mask.sum() == mask.size // 2
            np.testing.assert_array_equal(numpy(layer.kernel)[mask], 0.0)
            assert (numpy(layer.kernel)[~mask] != 0).all()

    def test_prune_by_count(self):
        model = randomize(cnn())
        (done,) = kc.prune_by_count(model, {"dw": 7})
        assert (
            done.pruned == 7 and held_mask(model.get_layer("dw"), "kernel").sum() == 7
        )
        with pytest.raises(
            ValueError, match=r"`counts\['dw'\]` must be an int in \[0, 65\]"
        ):
            kc.prune_by_count(model, {"dw": 66})

    @pytest.mark.parametrize(
        "fractions, match",
        [
            (
                {"fc": 1.5},
                r"`fractions\['fc'\]` must be a number in \[0, 1\]. "
                r"Received: fractions\['fc'\]=1.5",
            ),
            ({"fc": -0.1}, r"`fractions\['fc'\]` must be a number in \[0, 1\]"),
            ({"fc": True}, r"`fractions\['fc'\]` must be a number in \[0, 1\]"),
            ({"fc": "half"}, r"`fractions\['fc'\]` must be a number in \[0, 1\]"),
            ({"nope": 0.1}, r"one of \['conv', 'conv_bn', 'dw', 'fc'\]\). "),
            ({"side": 0.1}, r"'side' is not prunable"),
            ({"bn": 0.1}, r"'bn' is not prunable"),
            (0.5, r"must be a dict"),
        ],
    )
    def test_bad_inputs(self, fractions, match):
        with pytest.raises(ValueError, match=match):
            kc.prune_by_fraction(cnn(), fractions)


class TestSurgeryOfAPrunedModel(TestCase):
    def test_computes_what_the_pruned_model_computes_without_masks(self, tmp_path):
        model = randomize(cnn())
        kc.prune_by_fraction(model, {name: 0.6 for name in PRUNABLE.values()})
        for act in ("act_bn", "act_conv"):
            model.get_layer(act).lock_linear()  # conv_bn, bn, conv merge: masked
        before = {w.path: numpy(w).copy() for w in model.weights}
        x = self.random_inputs((4, 8, 8, 3))
        small, report = kc.surgery(model, return_report=True)
        assert report.count("merge") >= 1
        expected = numpy(model(x, training=False))
        got = numpy(small(x, training=False))
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
        for layer in small.layers:
            for key, value in layer.get_config().items():
                if key.endswith("_constraint") and value is not None:
                    assert value["class_name"] != "ZeroMask", (layer.name, key)
            for w in layer.weights:
                assert not isinstance(w.constraint, ZeroMask), w.path
        # The input model is unchanged, masks included.
        for w in model.weights:
            np.testing.assert_array_equal(numpy(w), before[w.path])
        assert isinstance(model.get_layer("fc").kernel_constraint, ZeroMask)
        assert isinstance(model.get_layer("fc").kernel.constraint, ZeroMask)

        self.assert_loads_without_keras_collapse(tmp_path, [(small, x, expected)])

    def test_make_collapsible_keeps_the_masks(self):
        x = keras.Input((4,))
        h = layers.ReLU()(layers.Dense(6, name="fc")(x))
        model = keras.Model(x, layers.Dense(2)(h))
        model = kc.make_collapsible(model)
        (done,) = kc.prune_by_fraction(model, {"fc": 0.5})
        again = kc.make_collapsible(model)
        np.testing.assert_array_equal(
            held_mask(again.get_layer("fc"), "kernel"),
            held_mask(model.get_layer("fc"), "kernel"),
        )


def oracle_shares(scores, caps, budget):
    """Reference real shares: min(cap, lam * softmax weight), lam found by
    bisection so that they sum to min(budget, sum(caps))."""
    s = np.asarray(scores, float)
    caps = np.asarray(caps, float)
    target = min(budget, caps.sum())
    logits = s.sum() / s
    w = np.exp(logits - logits.max())
    w = w / w.sum()
    lo, hi = 0.0, 1.0
    while np.minimum(caps, hi * w).sum() < target and hi < 1e300:
        hi *= 2
    for _ in range(400):
        mid = (lo + hi) / 2
        if np.minimum(caps, mid * w).sum() < target:
            lo = mid
        else:
            hi = mid
    return np.minimum(caps, hi * w), target


class TestAllocateBudget(TestCase):
    def test_hand_computed(self):
        # S = 3: logits 3 and 1.5; softmax 0.8176, 0.1824 of 10: 8.18, 1.82.
        assert kc.allocate_budget({"a": 1.0, "b": 2.0}, {"a": 100, "b": 100}, 10) == {
            "a": 8,
            "b": 2,
        }
        # Equal scores share equally.
        np.testing.assert_array_equal(kc.allocate_budget([1, 1], [9, 9], 4), [2, 2])
        # "a" is capped at 5; its excess goes to "b".
        np.testing.assert_array_equal(
            kc.allocate_budget([1.0, 2.0], [5, 100], 10), [5, 5]
        )
        # Caps in cascade: a capped at 1, then b at 2; c takes the rest.
        np.testing.assert_array_equal(
            kc.allocate_budget([1.0, 1.5, 6.0], [1, 2, 50], 20), [1, 2, 17]
        )
        # More budget than weights left: everything left.
        np.testing.assert_array_equal(
            kc.allocate_budget([0.3, 0.2], [3, 4], 100), [3, 4]
        )
        np.testing.assert_array_equal(kc.allocate_budget([0.3, 0.2], [3, 4], 0), [0, 0])
        # Scale-free: only ratios of scores matter.
        np.testing.assert_array_equal(
            kc.allocate_budget([1e-9, 2e-9], [100, 100], 10), [8, 2]
        )

    def test_against_the_oracle(self):
        rng = self.rng(7)
        for trial in range(300):
            n = int(rng.integers(1, 8))
            scores = rng.uniform(0.01, 3.0, n)
            caps = rng.integers(0, 60, n)
            budget = int(rng.integers(0, 2 * caps.sum() + 2))
            counts = kc.allocate_budget(scores, caps, budget)
            shares, target = oracle_shares(scores, caps, budget)
            assert counts.dtype == np.int64
            assert counts.sum() == target, trial
            assert (counts <= caps).all() and (counts >= 0).all(), trial
            assert (np.abs(counts - shares) < 1 + 1e-6).all(), (trial, counts, shares)
            # Largest remainder: whoever got rounded up had a remainder at
            # least as large as whoever was rounded down (and not capped).
            floors = np.floor(shares + 1e-9)
            up = counts > floors
            down = (counts == floors) & (counts < caps)
            if up.any() and down.any():
                assert (shares - floors)[up].min() >= (shares - floors)[
                    down
                ].max() - 1e-6

    def test_monotone_in_score_without_caps(self):
        rng = self.rng(3)
        for _ in range(100):
            scores = rng.uniform(0.1, 2.0, 6)
            counts = kc.allocate_budget(scores, [10**6] * 6, int(rng.integers(0, 1000)))
            order = np.argsort(scores)
            assert (np.diff(counts[order]) <= 0).all(), (scores, counts)

    @pytest.mark.parametrize(
        "args, match",
        [
            (([1.0, 0.0], [3, 3], 2), "finite scores > 0"),
            (([1.0, -1.0], [3, 3], 2), "finite scores > 0"),
            (([1.0, np.nan], [3, 3], 2), "finite scores > 0"),
            (([1.0], [3, 3], 2), "same length"),
            (([1.0, 2.0], [3, -1], 2), "ints >= 0"),
            (([1.0, 2.0], [3, 1.5], 2), "ints >= 0"),
            (([1.0, 2.0], [3, 3], 2.5), "`budget` must be an int >= 0"),
            (([1.0, 2.0], [3, 3], -1), "`budget` must be an int >= 0"),
            (({"a": 1.0}, {"b": 3}, 2), "keys of `scores`"),
        ],
    )
    def test_bad_inputs(self, args, match):
        with pytest.raises(ValueError, match=match):
            kc.allocate_budget(*args)
