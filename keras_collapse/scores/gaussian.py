"""The Gaussian model of a channel after BatchNormalization, in NumPy.

At inference, BatchNormalization makes channel c `gamma_c * x_hat + beta_c`
with `x_hat` normalized; TLC (arXiv 2412.15077) models the pre-activation as
`z ~ N(beta_c, gamma_c^2)`. A channel is OFF where `z <= 0`, so
`P(OFF) = Phi(-beta / |gamma|)` (with `gamma = 0`: OFF iff `beta <= 0`).

Forcing a channel to one state replaces the activation `f` there by a linear
map: ON by the identity (the channel passes through), OFF by zero (the channel
is removed). The expected error of each choice, `E|f(z) - z|` and `E|f(z)|`,
is computed in closed form for ReLU and by quadrature for any other
activation (ReLU6's saturation above 6 then counts as error of forcing ON).
"""

import math

import numpy as np

# Quadrature over standard-normal quantiles: 4001 nodes on [-8, 8]. The
# trapezoid rule keeps the error of a kinked integrand (ReLU6, hard_silu)
# near 1e-6 |gamma|; the mass beyond 8 sigma is 1e-15.
_NODES = np.linspace(-8.0, 8.0, 4001)
_WEIGHTS = np.exp(-0.5 * _NODES**2)
_WEIGHTS /= _WEIGHTS.sum()
_erf = np.vectorize(math.erf, otypes=[np.float64])


def normal_cdf(x):
    """Phi(x), the standard normal CDF, elementwise."""
    return 0.5 * (1.0 + _erf(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


def normal_pdf(x):
    """phi(x), the standard normal density, elementwise."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)


def _check(beta, gamma):
    beta = np.asarray(beta, dtype=np.float64)
    gamma = np.abs(np.asarray(gamma, dtype=np.float64))
    if beta.shape != gamma.shape or beta.ndim != 1:
        raise ValueError(
            "`beta` and `gamma` must be 1-D arrays of the same length (one value "
            f"per channel). Received shapes {beta.shape} and {gamma.shape}"
        )
    return beta, gamma


def probability_off(beta, gamma):
    """P(z <= 0) for z ~ N(beta, gamma^2), per channel.

    `gamma = 0` makes z the constant `beta`: OFF (1.0) iff `beta <= 0`.
    """
    beta, gamma = _check(beta, gamma)
    safe = np.where(gamma > 0, gamma, 1.0)
    return np.where(gamma > 0, normal_cdf(-beta / safe), (beta <= 0).astype(float))


def positive_part_mean(mean, std):
    """E[max(z, 0)] for z ~ N(mean, std^2), elementwise (std >= 0)."""
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    safe = np.where(std > 0, std, 1.0)
    m = mean / safe
    value = mean * normal_cdf(m) + std * normal_pdf(m)
    return np.where(std > 0, value, np.maximum(mean, 0.0))


def relu_errors(beta, gamma, alpha=0.0):
    """Expected errors of forcing `f(z) = relu(z) + alpha * min(z, 0)` ON or OFF.

    With `p = E[max(z, 0)]` and `n = E[max(-z, 0)]`: forcing ON (identity)
    errs by `E|f(z) - z| = |1 - alpha| n`, forcing OFF (zero) by
    `E|f(z)| = p + |alpha| n`. At `alpha = 0` the smaller of the two is
    `|gamma| phi(beta/|gamma|) - |beta| Phi(-|beta|/|gamma|)`, largest
    (0.40 |gamma|) at `beta = 0`.

    Args:
        beta: 1-D array, the BN offsets (pre-activation means).
        gamma: 1-D array, the BN scales (pre-activation standard deviations,
            sign ignored).
        alpha: float or 1-D array, the blend slope(s). Defaults to `0.0`.

    Returns:
        `(error_if_on, error_if_off)`, two 1-D float64 arrays.
    """
    beta, gamma = _check(beta, gamma)
    alpha = np.asarray(alpha, dtype=np.float64)
    positive = positive_part_mean(beta, gamma)
    negative = positive_part_mean(-beta, gamma)
    return np.abs(1.0 - alpha) * negative, positive + np.abs(alpha) * negative


def quadrature_errors(fn, beta, gamma, alpha=0.0):
    """Expected errors of forcing `f = act + alpha (z - act)` ON or OFF, for
    any elementwise `act`, by quadrature over z ~ N(beta, gamma^2).

    Args:
        fn: callable mapping a float NumPy array to `act` of it, elementwise.
        beta, gamma: 1-D arrays, as in `relu_errors`.
        alpha: float or 1-D array, the blend slope(s). Defaults to `0.0`.

    Returns:
        `(error_if_on, error_if_off)`: `E|f(z) - z|` and `E|f(z)|`.
    """
    beta, gamma = _check(beta, gamma)
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1, 1)
    z = beta[:, None] + gamma[:, None] * _NODES[None, :]
    act = np.asarray(fn(z), dtype=np.float64)
    blended = act + alpha * (z - act)
    return np.abs(blended - z) @ _WEIGHTS, np.abs(blended) @ _WEIGHTS
