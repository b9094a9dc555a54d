"""The data-free BN analysis on models: pairing, oracles, odd BNs, reports."""

import sys

import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.testing import TestCase
from tests.testing import require

layers = keras.layers


def set_bn(bn, gamma=None, beta=None, exact_unit_variance=False):
    """Sets gamma/beta; with `exact_unit_variance` the BN maps x to exactly
    gamma * x + beta (moving mean 0, variance 1 - epsilon)."""
    weights = {w.path.split("/")[-1]: keras.ops.convert_to_numpy(w) for w in bn.weights}
    if gamma is not None:
        weights["gamma"] = np.asarray(gamma, "float32")
    if beta is not None:
        weights["beta"] = np.asarray(beta, "float32")
    if exact_unit_variance:
        weights["moving_mean"] = np.zeros_like(weights["moving_mean"])
        weights["moving_variance"] = np.full_like(
            weights["moving_variance"], 1.0 - bn.epsilon
        )
    bn.set_weights([weights[w.path.split("/")[-1]] for w in bn.weights])


def bn_act_model(activation="relu", channels=6, **bn_kwargs):
    inputs = keras.Input((channels,))
    bn = layers.BatchNormalization(**bn_kwargs)
    act = kc.CollapsibleActivation(activation, alpha_regularizer=None, name="act")
    model = keras.Model(inputs, act(bn(inputs)))
    return model, bn, act


class TestOracle(TestCase):
    """Channels fed N(0, 1) through a BN that computes gamma x + beta: the
    model itself, sampled, is the oracle of the analysis."""

    @pytest.mark.parametrize("activation", ["relu", "relu6", "gelu", "silu"])
    def test_errors_match_the_model_on_gaussian_inputs(self, activation):
        model, bn, act = bn_act_model(activation)
        gamma = np.array([1.0, 0.5, 2.5, -1.2, 0.2, 4.0])
        beta = np.array([1.0, -0.5, 0.0, 2.0, -1.0, 5.0])
        set_bn(bn, gamma, beta, exact_unit_variance=True)
        x = self.random_inputs((100_000, 6))
        z = gamma * x + beta
        y = keras.ops.convert_to_numpy(model.predict(x, batch_size=20_000, verbose=0))
        states = kc.analyze_batchnorm(model)["act"]
        np.testing.assert_allclose(states.p_off, (z <= 0).mean(0), atol=5e-3)
        np.testing.assert_allclose(
            states.error_if_on, np.abs(y - z).mean(0), rtol=2e-2, atol=5e-3
        )
        np.testing.assert_allclose(
            states.error_if_off, np.abs(y).mean(0), rtol=2e-2, atol=5e-3
        )

    def test_blend_slope_is_taken_into_account(self):
        model, bn, act = bn_act_model("relu")
        set_bn(bn, np.ones(6), np.linspace(-1, 1, 6))
        before = kc.analyze_batchnorm(model)["act"].error_if_on
        act.set_alpha(0.75)
        after = kc.analyze_batchnorm(model)["act"].error_if_on
        np.testing.assert_allclose(after, 0.25 * before, rtol=1e-6)


class TestStates(TestCase):
    def test_states_scores_and_forced_off(self):
        model, bn, _ = bn_act_model()
        set_bn(bn, [1.0, 1.0, 1.0, 0.0, 0.0, 1.0], [5.0, -5.0, 0.0, 0.0, 2.0, 0.5])
        states = kc.analyze_batchnorm(model, confidence=0.9)["act"]
        assert states.state.tolist() == [
            "ON",
            "OFF",
            "uncertain",
            "OFF",
            "ON",
            "uncertain",
        ]
        # Forced OFF exactly where the table says OFF; the coin toss (beta 0)
        # passes through.
        assert states.off.tolist() == [False, True, False, True, False, False]
        assert states.off.tolist() == (states.state == "OFF").tolist()
        assert states.fraction("ON") == pytest.approx(2 / 6)
        assert 0 < states.score < 0.4

    def test_a_channel_leaning_off_is_not_zeroed_and_scores_its_pass_through(self):
        model, bn, _ = bn_act_model()
        set_bn(bn, np.ones(6), np.full(6, -1.0))  # P(OFF) = 0.84 < 0.95
        states = kc.analyze_batchnorm(model)["act"]
        assert not states.off.any() and set(states.state) == {"uncertain"}
        # The error of letting z ~ N(-1, 1) pass through: E|relu(z) - z|.
        z = np.random.default_rng(0).normal(-1.0, 1.0, 400_000)
        want = np.mean(np.abs(np.maximum(z, 0) - z)) / np.sqrt(2.0)
        assert states.score == pytest.approx(want, rel=1e-2)
        assert states.uninformed == pytest.approx(1 / np.sqrt(2 * np.pi), rel=1e-6)

    def test_score_orders_certain_layers_first(self):
        inputs = keras.Input((4,))
        acts, bns = [], []
        h = inputs
        for i in range(3):
            h = layers.Dense(4)(h)
            bns.append(layers.BatchNormalization())
            acts.append(kc.CollapsibleActivation(alpha_regularizer=None, name=f"a{i}"))
            h = acts[-1](bns[-1](h))
        model = keras.Model(inputs, h)
        set_bn(bns[0], np.ones(4), np.zeros(4))  # all uncertain
        set_bn(bns[1], np.ones(4), np.full(4, -6.0))  # all OFF
        set_bn(bns[2], np.ones(4), np.full(4, 1.0))  # mostly ON
        analysis = kc.analyze_batchnorm(model)
        assert [s.name for s in analysis.candidates()] == ["a1", "a2", "a0"]
        assert analysis["a1"].score < 1e-6

    def test_center_and_scale_off(self):
        model, _, _ = bn_act_model(center=False)
        states = kc.analyze_batchnorm(model)["act"]
        np.testing.assert_allclose(states.p_off, 0.5)  # beta = 0: a coin toss
        model, bn, _ = bn_act_model(scale=False)
        set_bn(bn, beta=np.full(6, -10.0))
        states = kc.analyze_batchnorm(model)["act"]
        assert (states.state == "OFF").all()  # gamma read as 1

    def test_non_finite_weights_are_reported_not_raised(self):
        model, bn, _ = bn_act_model()
        gamma = np.ones(6)
        gamma[2] = np.nan
        set_bn(bn, gamma)
        states = kc.analyze_batchnorm(model)["act"]
        assert not states.analysed and "non-finite" in states.reason
        assert kc.analyze_batchnorm(model).candidates() == []

    def test_the_model_is_not_modified(self):
        model, bn, _ = bn_act_model()
        set_bn(bn, np.linspace(-1, 1, 6), np.linspace(1, -1, 6))
        before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
        kc.analyze_batchnorm(model)
        for w, b in zip(model.weights, before):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), b)

    def test_bad_arguments(self):
        model, _, _ = bn_act_model()
        with pytest.raises(ValueError, match="confidence"):
            kc.analyze_batchnorm(model, confidence=0.4)
        with pytest.raises(ValueError, match="keras.Model"):
            kc.analyze_batchnorm("model")
        with pytest.raises(KeyError, match="Available"):
            kc.analyze_batchnorm(model)["missing"]


class TestPairs(TestCase):
    def pairs(self, model):
        return {s.name: s for s in kc.analyze_batchnorm(model)}

    def test_through_dropout_and_pooling(self):
        inputs = keras.Input((8, 8, 3))
        h = layers.Conv2D(4, 3)(inputs)
        h = layers.BatchNormalization(name="bn")(h)
        h = layers.MaxPooling2D()(layers.Dropout(0.2)(h))
        h = kc.CollapsibleActivation(name="act")(h)
        model = keras.Model(inputs, h)
        assert self.pairs(model)["act"].batchnorm == "bn"

    def test_after_a_residual_add_is_unpaired(self):
        inputs = keras.Input((4,))
        h = layers.BatchNormalization()(layers.Dense(4)(inputs))
        h = kc.CollapsibleActivation(name="act")(layers.Add()([inputs, h]))
        states = self.pairs(keras.Model(inputs, h))["act"]
        assert states.batchnorm is None and "merges" in states.reason

    def test_bn_with_another_reader_is_unpaired(self):
        inputs = keras.Input((4,))
        h = layers.BatchNormalization()(layers.Dense(4)(inputs))
        a = kc.CollapsibleActivation(name="act")(h)
        model = keras.Model(inputs, [a, h])
        assert "other readers" in self.pairs(model)["act"].reason

    def test_nested_model_is_read(self):
        inner_in = keras.Input((4,))
        bn = layers.BatchNormalization(name="inner_bn")
        inner = keras.Model(
            inner_in, kc.CollapsibleActivation(name="act")(bn(inner_in))
        )
        inputs = keras.Input((4,))
        model = keras.Model(inputs, layers.Dense(2)(inner(layers.Dense(4)(inputs))))
        assert self.pairs(model)["act"].batchnorm == "inner_bn"


class TestReport(TestCase):
    def model(self):
        inputs = keras.Input((4,))
        bn = layers.BatchNormalization(name="bn")
        h = kc.CollapsibleActivation(name="paired")(bn(layers.Dense(4)(inputs)))
        h = kc.CollapsibleActivation(name="unpaired")(layers.Add()([h, inputs]))
        set_bn(bn, np.ones(4), [3.0, 3.0, -3.0, 0.0])
        return keras.Model(inputs, h)

    def test_table(self):
        text = str(kc.analyze_batchnorm(self.model()))
        lines = text.splitlines()
        paired = next(line for line in lines if line.startswith("paired"))
        assert "50%" in paired and "25%" in paired and paired.split()[-1] == "no"
        unpaired = next(line for line in lines if line.startswith("unpaired"))
        assert "merges" in unpaired

    def test_as_dict(self):
        d = kc.analyze_batchnorm(self.model()).as_dict()
        assert d["layers"][0]["on"] == 0.5 and d["layers"][1]["score"] is None

    def test_plot(self):
        require("matplotlib", "plot()")
        fig = kc.analyze_batchnorm(self.model()).plot()
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["paired", "unpaired"]
        heights = sorted(round(p.get_height(), 2) for p in ax.patches)
        assert 0.5 in heights and 0.25 in heights

    def test_plot_without_matplotlib_says_what_to_install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
        with pytest.raises(ImportError, match=r"keras-collapse\[plot\]"):
            kc.analyze_batchnorm(self.model()).plot()
