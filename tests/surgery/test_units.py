"""Merge units: what linearizing buys, from dry runs of the surgery's passes,
checked against the real surgery, NumPy counts and the callbacks' choices."""

import re
import warnings

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.callbacks.budget import Budget
from tests.surgery.test_entry import bn
from tests.testing import TestCase

layers = keras.layers


def act(x, name, activation="relu"):
    return kc.CollapsibleActivation(activation, alpha_regularizer=None, name=name)(x)


def mobilenet_block(size=8, channels=8, expand=48):
    inputs = keras.Input((size, size, channels))
    h = layers.Conv2D(expand, 1, use_bias=False, name="expand")(inputs)
    h = act(bn(h, 0), "expand_act", "relu6")
    h = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    h = act(bn(h, 1, name="dw_bn"), "dw_act", "relu6")
    h = layers.Conv2D(channels, 1, use_bias=False, name="project")(h)
    h = layers.Add()([inputs, bn(h, 2)])
    return keras.Model(inputs, layers.Conv2D(4, 1, name="head")(h))


def resnet_block(size=8, channels=8):
    inputs = keras.Input((size, size, channels))
    h = layers.Conv2D(channels, 3, padding="same", name="conv1")(inputs)
    h = act(bn(h, 0), "inner")
    h = layers.Conv2D(channels, 3, padding="same", name="conv2")(h)
    h = layers.Add()([inputs, bn(h, 1)])
    return keras.Model(inputs, act(h, "outer"))


def dense_pair(n_in=8, hidden=32, n_out=4):
    inputs = keras.Input((n_in,))
    h = act(layers.Dense(hidden, name="fc1")(inputs), "fc_act")
    return keras.Model(inputs, layers.Dense(n_out, name="fc2")(h))


def both():
    """A model with a Dense∘Dense unit ('fc_act') and a ResNet-style
    "same" 3x3∘3x3 activation that buys nothing ('inner')."""
    inputs = keras.Input((8, 8, 4))
    h = layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    h = act(h, "inner")
    h = layers.Conv2D(4, 3, padding="same", name="conv2")(h)
    h = layers.GlobalAveragePooling2D()(h)
    h = act(layers.Dense(16, name="fc1")(h), "fc_act")
    model = keras.Model(inputs, layers.Dense(3, name="fc2")(h))
    model.compile("sgd", "mse")
    return model


def surgery_stats(model, linear=()):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in kc.collapsible_layers(copy):
        if layer.name in linear:
            layer.lock_linear()
    _, report = kc.surgery(copy, return_report=True)
    return report.after


class TestMergeUnits(TestCase):
    def test_mobilenet_block_is_one_unit_of_two(self):
        model = mobilenet_block()
        found = kc.merge_units(model)
        assert [u.activations for u in found.units] == [("expand_act", "dw_act")]
        assert found.useless == {}

    def test_unit_numbers_are_what_the_surgery_does(self):
        # The oracle: the real surgery with the unit locked vs without.
        model = mobilenet_block()
        (unit,) = kc.merge_units(model).units
        base = surgery_stats(model)
        merged = surgery_stats(model, unit.activations)
        assert unit.macs == base.macs - merged.macs > 0
        assert unit.params == base.params - merged.params > 0
        assert unit.depth == base.depth - merged.depth == 2
        # The activations go too; the rest is what the merge removed.
        assert unit.layers == base.layers - merged.layers - 2
        # expand(8->48) + dw(3x3x48) + project(48->8) -> one 3x3 8->8 conv.
        positions = 8 * 8
        before = 8 * 48 + 9 * 48 + 48 * 8
        assert unit.macs == (before - 9 * 8 * 8) * positions

    def test_zeroed_off_channels_can_leave_nothing_to_merge(self):
        # TLC zeroes always-OFF channels at the BN; with 44 of the 48
        # depthwise channels cut, the block's three thin layers cost less
        # than one 3x3 8->8 conv: no merge. Oracle: the real surgery.
        model = mobilenet_block()
        found = kc.merge_units(model)
        names = ("expand_act", "dw_act")
        base = surgery_stats(model)
        for off in (np.arange(48) >= 4, np.arange(48) < 4):
            unit = found.evaluate(names, {"dw_act": off})
            zeroed = keras.models.clone_model(model)
            zeroed.set_weights(model.get_weights())
            bn_layer = zeroed.get_layer("dw_bn")
            gamma, beta, mean, var = bn_layer.get_weights()
            bn_layer.set_weights(
                [np.where(off, 0, gamma), np.where(off, 0, beta), mean, var]
            )
            real = surgery_stats(zeroed, names)
            assert unit.layers == base.layers - real.layers - 2
            assert unit.macs == base.macs - real.macs
        assert found.evaluate(names, {"dw_act": np.arange(48) >= 4}).layers == 0
        assert found.evaluate(names, {"dw_act": np.arange(48) < 4}).layers > 0
        # Zeroing acts on a copy: the base of later dry runs is unchanged.
        assert found.evaluate(names) == found.units[0]

    def test_table_gives_each_unit_its_share_of_the_bn_folded_model(self):
        # A MobileNetV2 block and a Dense∘Dense head: two units.
        block = mobilenet_block()
        h = layers.GlobalAveragePooling2D()(block.output)
        h = act(layers.Dense(16, name="fc1")(h), "fc_act")
        model = keras.Model(block.input, layers.Dense(3, name="fc2")(h))
        found = kc.merge_units(model)
        assert len(found.units) == 2
        base = found.dry_run.base_cost
        assert found.total == {
            "depth": base.depth,
            "params": base.params,
            "macs": base.macs,
            "latency": float(base.latency),
        }
        # The BN-folded model is what the surgery leaves with nothing linear.
        folded = surgery_stats(model)
        assert (folded.depth, folded.params, folded.macs) == (
            base.depth,
            base.params,
            base.macs,
        )
        table = found.table()
        assert f"depth {base.depth}, {base.params:,} params" in table
        for unit in found.units:
            (row,) = [
                line
                for line in table.splitlines()
                if line.startswith(", ".join(unit.activations) + " ")
            ]
            shares = [float(s) / 100 for s in re.findall(r"\((-?[\d.]+)%\)", row)]
            expected = [
                getattr(unit, field) / getattr(base, field)
                for field in ("depth", "params", "macs", "latency")
            ]
            assert all(0 < e < 1 for e in expected)
            np.testing.assert_allclose(shares, expected, atol=5e-4)
        # Budget.plan prices its target against the same total.
        budget = Budget.plan(model, ["expand_act", "dw_act", "fc_act"], "depth", 0.2)
        assert budget.total == base.depth
        assert budget.needed == pytest.approx(0.2 * base.depth)

    def test_lone_activation_of_a_block_buys_nothing(self):
        found = kc.merge_units(mobilenet_block(), candidates=["expand_act"])
        assert found.units == []
        assert "expand_act" in found.useless
        assert found.for_objective("depth") == []

    def test_state_matters_one_locked_makes_the_other_a_unit(self):
        model = mobilenet_block()
        kc.lock_linear(model, "expand_act")
        found = kc.merge_units(model)
        assert [u.activations for u in found.units] == [("dw_act",)]

    def test_resnet_inner_relu_buys_nothing_in_exact_mode(self):
        found = kc.merge_units(resnet_block())
        assert found.units == []
        assert "border" in found.useless["inner"]
        assert "exact=False" in found.why_none("depth")

    def test_resnet_inner_relu_in_inexact_mode_depends_on_the_cost_model(self):
        # 3x3∘3x3 is a 5x5: 25 C^2 MACs against 18 C^2, not taken by MACs;
        # a cost model that prices each layer high takes it.
        model = resnet_block()
        assert kc.merge_units(model, exact=False).units == []
        heavy = kc.MacCostModel(layer_overhead=1e7)
        (unit,) = kc.merge_units(model, exact=False, cost_model=heavy).units
        assert unit.activations == ("inner",)
        assert unit.macs == (18 - 25) * 8 * 8 * 8 * 8  # it costs MACs
        assert unit.latency > 0

    def test_dense_dense_is_one_unit_with_numpy_counts(self):
        (unit,) = kc.merge_units(dense_pair(8, 32, 4)).units
        assert unit.activations == ("fc_act",)
        assert unit.layers == 1 and unit.depth == 1
        assert unit.params == (8 * 32 + 32 + 32 * 4 + 4) - (8 * 4 + 4)
        assert unit.macs == 8 * 32 + 32 * 4 - 8 * 4
        # Widening (4 -> 32 -> 4... here 8 -> 2 -> 8) merges into more MACs:
        # the surgery keeps the pair, so it is no unit.
        assert kc.merge_units(dense_pair(8, 2, 8)).units == []

    def test_dry_run_never_changes_the_model(self):
        model = mobilenet_block()
        weights = [w.copy() for w in model.get_weights()]
        configs = [layer.get_config() for layer in model.layers]
        linear = [layer.is_linear for layer in kc.collapsible_layers(model)]
        x = self.random_inputs((2, 8, 8, 8))
        y = keras.ops.convert_to_numpy(model(x))
        kc.merge_units(model, exact=False)
        for before, after in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(before, after)
        assert [layer.get_config() for layer in model.layers] == configs
        assert [layer.is_linear for layer in kc.collapsible_layers(model)] == linear
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), y)

    def test_mobilenet_v2_every_block_is_one_unit_of_two(self):
        model = kc.make_collapsible(
            keras.applications.MobileNetV2(
                weights=None, input_shape=(64, 64, 3), alpha=0.35
            )
        )
        found = kc.merge_units(model)
        assert found.units and all(len(u.activations) == 2 for u in found.units)
        for unit in found.units:
            expand, depthwise = unit.activations
            assert expand.endswith("expand_relu")
            assert depthwise == expand.replace("expand", "depthwise")

    def test_bad_arguments(self):
        model = dense_pair()
        with pytest.raises(ValueError, match="not nonlinear collapsible"):
            kc.merge_units(model, candidates=["fc1"])
        with pytest.raises(ValueError, match="list of activation"):
            kc.merge_units(model, candidates="fc_act")
        with pytest.raises(ValueError, match="max_size"):
            kc.merge_units(model, max_size=0)
        with pytest.raises(ValueError, match=r"\['activations', 'depth', 'latency'\]"):
            kc.lock_near_linear(model, objective="layers")


class TestUnclear(TestCase):
    """Issue 23: what was accepted silently or answered anyway."""

    def test_evaluate_unknown_names(self):
        found = kc.merge_units(mobilenet_block())
        with pytest.raises(ValueError, match=r"Received unknown name\(s\) \['nope'\]"):
            found.evaluate(["nope"])  # was an all-zero unit
        with pytest.raises(ValueError, match="among.*'dw_act', 'expand_act'"):
            found.evaluate(["dw_act", "expand"])  # a conv, not an activation
        with pytest.raises(ValueError, match="must be a list"):
            found.evaluate("dw_act")  # was read letter by letter
        assert found.evaluate({"expand_act", "dw_act"}).layers > 0

    def test_evaluate_off_masks(self):
        found = kc.merge_units(mobilenet_block())
        names = ["expand_act", "dw_act"]
        match = r"off\['dw_act'\]` must be a bool mask.*shape \(48,\).*\(47,\)"
        with pytest.raises(ValueError, match=match):
            found.evaluate(names, {"dw_act": np.arange(47) >= 4})  # was ignored
        with pytest.raises(ValueError, match=r"shape \(48,\).*\(6, 8\)"):
            found.evaluate(names, {"dw_act": np.ones((6, 8), bool)})
        with pytest.raises(ValueError, match="keys among `names`"):
            found.evaluate(["dw_act"], {"expand_act": np.ones(48, bool)})
        with pytest.raises(ValueError, match="must be None or a dict"):
            found.evaluate(names, [np.ones(48, bool)])
        # A right one still acts (see the test above), given as a list too.
        unit = found.evaluate(names, {"dw_act": list(np.arange(48) >= 4)})
        assert unit.layers == 0

    def test_why_none_checks_the_objective(self):
        found = kc.merge_units(resnet_block())
        assert "objective 'depth'" in found.why_none()
        with pytest.raises(ValueError, match=r"objective.*Received: objective='nope'"):
            found.why_none("nope")


class _Fixed:
    """A scorer that ranks by a fixed table (lower is safer)."""

    label = "fixed"

    def __init__(self, values):
        self.values = values

    def __call__(self, context, pairs):
        return [(p, self.values[p.activation.name]) for p in pairs]


class _Scripted(keras.callbacks.Callback):
    """Writes `fake_acc` into the logs from a script, one value per epoch
    (listed before the callback it steers)."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["fake_acc"] = self.values[epoch]


class TestObjective(TestCase):
    def fit(self, callback, epochs=3):
        model = both()
        x = self.random_inputs((32, 8, 8, 4))
        y = self.random_inputs((32, 3), seed=1)
        model.fit(x, y, epochs=epochs, verbose=0, callbacks=[callback])
        return model

    def engine(self, objective, **kwargs):
        return kc.LinearizationCallback(
            _Fixed({"inner": 0.1, "fc_act": 0.5}),
            interval=1,
            ramp_epochs=0,
            tolerance=1e9,
            max_layers=1,
            objective=objective,
            verbose=0,
            **kwargs,
        )

    def test_depth_picks_the_unit_over_a_safer_useless_activation(self):
        papers = self.engine("activations")
        self.fit(papers)
        assert papers.linearized == ["inner"]
        depth = self.engine("depth")
        self.fit(depth)
        assert depth.linearized == ["fc_act"]
        event = next(e for e in depth.events if e["action"] == "linearized")
        assert event["units"] == [(("fc_act",), 1.0)]
        latency = self.engine("latency")
        self.fit(latency)
        assert latency.linearized == ["fc_act"]

    def test_data_free_warning_names_data_when_units_lack_a_batchnorm(self):
        # The BN-paired activation sits between two "same" 3x3 convs (no
        # exact merge); the one unit is the Dense head's, without a BN.
        inputs = keras.Input((8, 8, 4))
        h = layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
        h = act(bn(h, 0), "inner")
        h = layers.Conv2D(4, 3, padding="same", name="conv2")(h)
        h = layers.GlobalAveragePooling2D()(h)
        h = act(layers.Dense(16, name="fc1")(h), "fc_act")
        model = keras.Model(inputs, layers.Dense(3, name="fc2")(h))
        model.compile("sgd", "mse")
        tlc = kc.TLCCallback(objective="depth", verbose=0)
        x = self.random_inputs((32, 8, 8, 4))
        y = self.random_inputs((32, 3), seed=1)
        with pytest.warns(UserWarning, match=r"\['fc_act'\].*`data=x_sample`"):
            model.fit(x, y, epochs=2, verbose=0, callbacks=[tlc])
        assert tlc.linearized == []

    def test_per_decision_takes_several_units_at_once(self):
        def two_units():
            # Two Dense∘Dense units after the pooling: fc_act and fc2_act.
            model = both()
            h = kc.CollapsibleActivation(alpha_regularizer=None, name="fc2_act")(
                keras.layers.Dense(8, name="fc_mid")(model.get_layer("fc_act").output)
            )
            model = keras.Model(model.input, keras.layers.Dense(3, name="out")(h))
            model.compile("sgd", "mse")
            return model

        x = self.random_inputs((32, 8, 8, 4))
        y = self.random_inputs((32, 3), seed=1)
        scores = {"inner": 0.1, "fc_act": 0.5, "fc2_act": 0.7}
        for objective, expected in (
            ("depth", ["fc_act", "fc2_act"]),
            ("activations", ["inner", "fc_act"]),
        ):
            callback = kc.LinearizationCallback(
                _Fixed(scores),
                interval=1,
                ramp_epochs=0,
                tolerance=1e9,
                objective=objective,
                per_decision=2,
                verbose=0,
            )
            two_units().fit(x, y, epochs=2, verbose=0, callbacks=[callback])
            first = next(e for e in callback.events if e["action"] == "linearized")
            assert first["layers"] == expected
        with pytest.raises(ValueError, match="per_decision"):
            kc.TLCCallback(per_decision=0)

    def test_fractional_pace_starts_bold_and_halves_after_a_rollback(self):
        # Eight Dense layers, each activation its own Dense∘Dense unit; a
        # scripted guard rejects the first change and accepts the rest.
        def chain():
            inputs = keras.Input((6,))
            h = inputs
            for i in range(8):
                h = act(layers.Dense(6, name=f"fc{i}")(h), f"a{i}")
            model = keras.Model(inputs, layers.Dense(2, name="out")(h))
            model.compile("sgd", "mse")
            return model

        scores = {f"a{i}": float(i) for i in range(8)}
        x = self.random_inputs((16, 6))
        y = self.random_inputs((16, 2), seed=1)
        for objective in ("activations", "depth"):
            guard = _Scripted([1.0, 0.0, 1.0, 1.0, 1.0])
            callback = kc.LinearizationCallback(
                _Fixed(scores),
                interval=1,
                ramp_epochs=0,
                monitor="fake_acc",
                mode="max",
                tolerance=0.1,
                objective=objective,
                per_decision=0.5,
                verbose=0,
            )
            chain().fit(x, y, epochs=5, verbose=0, callbacks=[guard, callback])
            taken = [e["layers"] for e in callback.events if e["action"] != "stopped"]
            actions = [e["action"] for e in callback.events]
            # Half of 8, rolled back and retried: a quarter of the 8 left,
            # then a quarter of the 6 left (ceil), then of the 4 left.
            assert actions[:2] == ["linearized", "rolled back"]
            assert taken[0] == ["a0", "a1", "a2", "a3"]
            assert taken[2] == ["a0", "a1"]
            assert [e["pace"] for e in callback.events if "pace" in e] == [
                0.5,
                0.25,
                0.25,
                0.25,
            ]
            assert callback.linearized == ["a0", "a1", "a2", "a3", "a4"]
            assert callback.kept == []
            assert callback.events[1]["retried"] is True
        for bad in (0.0, 1.5, -1, True, "half"):
            with pytest.raises(ValueError, match="per_decision.*float in"):
                kc.TLCCallback(per_decision=bad)

    def test_unknown_objective_lists_the_choices(self):
        for make in (
            lambda: self.engine("speed"),
            lambda: kc.TLCCallback(objective="speed"),
            lambda: kc.EASIERCallback(np.zeros((4, 8, 8, 4)), objective=None),
        ):
            with pytest.raises(ValueError, match="'activations', 'depth', 'latency'"):
                make()

    def test_no_unit_warns_once_and_does_nothing(self):
        model = resnet_block()
        model.compile("sgd", "mse")
        weights = [
            keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights
        ]
        callback = kc.LinearizationCallback(
            _Fixed({"inner": 0.1, "outer": 0.2}),
            interval=1,
            ramp_epochs=0,
            objective="depth",
            verbose=0,
        )
        x = self.random_inputs((16, 8, 8, 8))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                model.compile(keras.optimizers.SGD(0.0), "mse")
                model.fit(x, x, epochs=3, verbose=0, callbacks=[callback])
        said = [str(w.message) for w in caught if "merge" in str(w.message)]
        assert len(said) == 1
        assert "'same' k x k into k x k" in said[0] and "exact=False" in said[0]
        assert callback.linearized == []
        assert not any(layer.is_linear for layer in kc.collapsible_layers(model))
        for before, after in zip(weights, model.trainable_weights):
            np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(after))

    def test_nepenthe_depth_prunes_only_unit_members(self):
        model = both()
        x = self.random_inputs((64, 8, 8, 4))
        y = self.random_inputs((64, 3), seed=1)
        nepenthe = kc.NEPENTHECallback(
            x, interval=1, tolerance=1e9, objective="depth", verbose=0
        )
        model.fit(x, y, epochs=3, verbose=0, callbacks=[nepenthe])
        state = kc.sparsity(model)
        assert state.layers["fc1"] > 0
        assert state.layers["conv1"] == 0

    def test_lock_near_linear_depth_locks_whole_units_only(self):
        model = mobilenet_block()
        expand = model.get_layer("expand_act")
        expand.set_alpha(0.99)
        # Half a unit near linear: locking it would save nothing.
        assert kc.lock_near_linear(model, 0.05, objective="depth") == []
        assert not expand.is_locked
        assert kc.lock_near_linear(model, 0.05) == [expand]
        model = mobilenet_block()
        for name in ("expand_act", "dw_act"):
            model.get_layer(name).set_alpha(1.02)
        locked = kc.lock_near_linear(model, 0.05, objective="depth")
        assert sorted(layer.name for layer in locked) == ["dw_act", "expand_act"]
