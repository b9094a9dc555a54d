"""`lock_near_linear`: LayerCollapse's collapse condition, and with
objective "depth" / "latency" only where the surgery would merge."""

import warnings

import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.testing import TestCase


def chain(n=3):
    """Dense -> act -> ... -> Dense: each activation sits between two Dense
    layers, so linearizing any one merges them (depth - 1)."""
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8)(inputs)
    for i in range(n):
        h = kc.CollapsibleActivation("gelu", alpha_regularizer=None, name=f"a{i}")(h)
        h = keras.layers.Dense(8)(h)
    return keras.Model(inputs, h)


class TestLockNearLinear(TestCase):
    def test_locks_within_tolerance_and_snaps_to_one(self):
        model = chain()
        model.get_layer("a0").set_alpha(0.97)
        model.get_layer("a1").set_alpha(1.04)
        model.get_layer("a2").set_alpha(0.9)
        locked = kc.lock_near_linear(model, 0.05)
        assert [layer.name for layer in locked] == ["a0", "a1"]
        for name in ("a0", "a1"):
            layer = model.get_layer(name)
            assert layer.is_locked and layer.is_linear
        assert not model.get_layer("a2").is_locked

    def test_tolerance_is_the_largest_distance_over_a_layers_alphas(self):
        inputs = keras.Input((4,))
        act = kc.CollapsiblePReLU(alpha_regularizer=None, shared_axes=None, name="p")
        model = keras.Model(inputs, act(keras.layers.Dense(4)(inputs)))
        act.set_alpha(np.array([1.0, 0.99, 1.0, 0.93], "float32"))
        with pytest.warns(UserWarning, match=r"p at \|alpha - 1\| = 0.07"):
            assert kc.lock_near_linear(model, 0.05) == []
        assert kc.lock_near_linear(model, 0.08) == [act]

    def test_already_locked_are_not_returned(self):
        model = chain()
        kc.lock_linear(model, "a0")
        model.get_layer("a1").set_alpha(1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            locked = kc.lock_near_linear(model, 0.05)
        assert [layer.name for layer in locked] == ["a1"]

    @pytest.mark.parametrize("objective", ["depth", "latency"])
    def test_exactly_linear_slope_does_not_crash_the_merge_units(self, objective):
        # Regression: a slope already exactly 1 (not locked) was passed to
        # merge_units as a candidate, which refuses linear activations
        # ("`candidates` names layers that are not nonlinear collapsible
        # activations").
        model = chain()
        model.get_layer("a0").set_alpha(1.0)
        model.get_layer("a1").set_alpha(0.98)
        locked = kc.lock_near_linear(model, objective=objective)
        names = sorted(layer.name for layer in locked)
        assert names == ["a0", "a1"]
        assert model.get_layer("a0").is_locked and model.get_layer("a1").is_locked
        assert not model.get_layer("a2").is_locked

    def test_exactly_linear_alone_is_locked_under_depth(self):
        model = chain()
        model.get_layer("a1").set_alpha(1.0)
        locked = kc.lock_near_linear(model, objective="depth")
        assert [layer.name for layer in locked] == ["a1"]
        assert model.get_layer("a1").is_locked

    @pytest.mark.parametrize("bad", [-0.1, 1, 1.5, True, "5%", None])
    def test_bad_tolerance(self, bad):
        match = r"`tolerance` must be a number in \[0, 1\), the largest \|alpha - 1\|"
        with pytest.raises(ValueError, match=match):
            kc.lock_near_linear(chain(), bad)

    def test_bad_objective_and_exact(self):
        with pytest.raises(ValueError, match="objective"):
            kc.lock_near_linear(chain(), objective="layers")
        with pytest.raises(ValueError, match=r"`exact` must be True or False"):
            kc.lock_near_linear(chain(), exact="yes")

    def test_old_home_still_works(self):
        from keras_collapse.actions.locking import lock_near_linear

        assert kc.lock_near_linear is lock_near_linear
