"""The Gaussian channel model against a Monte-Carlo oracle."""

import math

import numpy as np
import pytest

from keras_collapse.scores import gaussian
from tests.testing import TestCase

# beta, gamma pairs: ON-leaning, OFF-leaning, balanced, negative gamma, tiny gamma.
BETA = np.array([1.5, -0.7, 0.0, 0.3, 2.0, -2.0])
GAMMA = np.array([1.0, 0.5, 2.0, -0.8, 0.05, 3.0])
SAMPLES = 400_000


def monte_carlo(beta, gamma, fn, seed=0):
    """E over z ~ N(beta, gamma^2) of fn(z), per channel, by sampling."""
    u = np.random.default_rng(seed).standard_normal((SAMPLES, 1))
    z = beta[None, :] + np.abs(gamma)[None, :] * u
    return fn(z).mean(axis=0)


def relu(z):
    return np.maximum(z, 0.0)


def relu6(z):
    return np.clip(z, 0.0, 6.0)


def gelu_tanh(z):
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


class TestProbabilityOff(TestCase):
    def test_matches_sampling(self):
        expected = monte_carlo(BETA, GAMMA, lambda z: (z <= 0).astype(float))
        np.testing.assert_allclose(
            gaussian.probability_off(BETA, GAMMA), expected, atol=3e-3
        )

    def test_zero_gamma_is_deterministic(self):
        p = gaussian.probability_off([0.5, 0.0, -0.1], [0.0, 0.0, 0.0])
        np.testing.assert_array_equal(p, [0.0, 1.0, 1.0])

    def test_rejects_mismatched_shapes(self):
        with pytest.raises(ValueError, match="same length"):
            gaussian.probability_off([0.0, 1.0], [1.0])


class TestReluErrors(TestCase):
    @pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
    def test_match_sampling(self, alpha):
        def blend(z):
            return relu(z) + alpha * np.minimum(z, 0.0)

        on, off = gaussian.relu_errors(BETA, GAMMA, alpha)
        expected_on = monte_carlo(BETA, GAMMA, lambda z: np.abs(blend(z) - z))
        expected_off = monte_carlo(BETA, GAMMA, lambda z: np.abs(blend(z)))
        np.testing.assert_allclose(on, expected_on, rtol=1e-2, atol=2e-3)
        np.testing.assert_allclose(off, expected_off, rtol=1e-2, atol=2e-3)

    def test_smaller_error_is_the_tlc_formula(self):
        on, off = gaussian.relu_errors(BETA, GAMMA)
        g, b = np.abs(GAMMA), np.abs(BETA)
        formula = g * gaussian.normal_pdf(b / g) - b * gaussian.normal_cdf(-b / g)
        np.testing.assert_allclose(np.minimum(on, off), formula, rtol=1e-9, atol=1e-12)
        # The largest error is at beta = 0: 0.40 |gamma|.
        at_zero = gaussian.relu_errors([0.0], [1.0])[0][0]
        assert at_zero == pytest.approx(1 / math.sqrt(2 * math.pi))

    def test_zero_gamma_has_no_error_in_the_forced_state(self):
        on, off = gaussian.relu_errors([2.0, -1.0], [0.0, 0.0])
        np.testing.assert_array_equal(on, [0.0, 1.0])
        np.testing.assert_array_equal(off, [2.0, 0.0])


class TestQuadrature(TestCase):
    @pytest.mark.parametrize("fn", [relu, relu6, gelu_tanh], ids=lambda f: f.__name__)
    def test_matches_sampling(self, fn):
        beta, gamma = BETA * 3, GAMMA * 3  # reach ReLU6's saturation
        on, off = gaussian.quadrature_errors(fn, beta, gamma)
        expected_on = monte_carlo(beta, gamma, lambda z: np.abs(fn(z) - z))
        expected_off = monte_carlo(beta, gamma, lambda z: np.abs(fn(z)))
        np.testing.assert_allclose(on, expected_on, rtol=1e-2, atol=5e-3)
        np.testing.assert_allclose(off, expected_off, rtol=1e-2, atol=5e-3)

    def test_agrees_with_the_relu_closed_form(self):
        closed = gaussian.relu_errors(BETA, GAMMA, 0.25)
        numeric = gaussian.quadrature_errors(relu, BETA, GAMMA, 0.25)
        np.testing.assert_allclose(numeric, closed, atol=1e-5)
