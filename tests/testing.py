"""The suite's small base class: oracles, round trips, random data."""

import importlib
import os
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest

# How to get every optional test dependency: scripts/dev.py setup installs
# the `test` extra and keras-hub (which the extra cannot list, see there).
INSTALL_HINT = (
    "run `python3 scripts/dev.py setup` (the `test` extra plus keras-hub), "
    "or `pip install -e '.[test]'`"
)


# Long training flows (fits of several epochs, README and tutorial runs):
# their logic is the library's Python over Keras' `fit`, the same on every
# backend, and they cost 2-4x more on TensorFlow and JAX than on torch. In
# the default run they run on torch; `--run-large` runs them everywhere.
# (Backend-specific paths — the surgery, the layers, the graph, state sync,
# distribution, export — run on all three in every run.)
SLOW_OFF_TORCH = [pytest.mark.large] if keras.backend.backend() != "torch" else []


def slow_off_torch(test):
    """Marks one test function large except on torch (`SLOW_OFF_TORCH`)."""
    return pytest.mark.large(test) if SLOW_OFF_TORCH else test


def trains(code):
    """Whether a script trains (calls `fit` or `collapse`): a long flow."""
    return ".fit(" in code or "kc.collapse(" in code


class TestCase:
    """Helpers shared by the test classes (pytest collects `Test*` subclasses)."""

    def rng(self, seed=0):
        return np.random.default_rng(seed)

    def random_inputs(self, shape, seed=0, scale=1.0):
        return (self.rng(seed).standard_normal(shape) * scale).astype("float32")

    def assert_close(self, actual, expected, atol=1e-6, rtol=1e-6, msg=""):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(actual),
            keras.ops.convert_to_numpy(expected),
            atol=atol,
            rtol=rtol,
            err_msg=msg,
        )

    def save_and_load(self, model, tmp_path, name="model.keras"):
        """Saves to `.keras` and loads back without `custom_objects`."""
        path = os.path.join(str(tmp_path), name)
        model.save(path)
        return keras.saving.load_model(path)

    def assert_loads_without_keras_collapse(
        self, tmp_path, cases, atol=1e-5, imports=()
    ):
        """Saves each `(model, x, expected)` and loads them all in one fresh
        process that must compute `expected` on `x` and never import
        keras_collapse. `x` and `expected` may be arrays, lists or dicts;
        `imports` are modules the fresh process imports first (`keras_hub`,
        whose layers a keras-hub result holds)."""
        lines = ["import pickle, sys, numpy as np, keras"]
        lines += [f"import {module}" for module in imports]
        lines += [
            "def flat(v):",
            "    v = [v[k] for k in sorted(v)] if isinstance(v, dict) else v",
            "    return [keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(v)]",
        ]
        for i, (model, x, expected) in enumerate(cases):
            path = os.path.join(str(tmp_path), f"case{i}.keras")
            model.save(path)
            with open(os.path.join(str(tmp_path), f"case{i}.pkl"), "wb") as f:
                pickle.dump((x, [np.asarray(e) for e in _flat(expected)]), f)
            lines += [
                f"m = keras.saving.load_model({path!r})",
                f"x, y = pickle.load(open('case{i}.pkl', 'rb'))",
                "for out, want in zip(flat(m(x)), y, strict=True):",
                f"    np.testing.assert_allclose(out, want, atol={atol!r}, "
                f"rtol={atol!r})",
            ]
        lines += [
            "assert 'keras_collapse' not in sys.modules, 'keras_collapse imported'",
            "print('ok')",
        ]
        result = subprocess.run(
            [sys.executable, "-c", "\n".join(lines)],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            cwd=str(tmp_path),
        )
        assert result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def _flat(value):
    value = [value[k] for k in sorted(value)] if isinstance(value, dict) else value
    return [keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(value)]


def require(module_name, reason=None):
    """Imports an optional test dependency, or skips the calling test.

    Locally a missing module skips the test (the whole module when called at
    module level). In CI (`CI=true`, which `.ci/run` exports) it fails the
    run instead, so that a dependency the CI setup forgot cannot turn tests
    into silent skips.

    Args:
        module_name: str, the module to import (`"sklearn"`, `"keras_hub"`).
        reason: str or None, what needs it; shown in the message.

    Returns:
        the imported module.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        needed = f" (needed for {reason})" if reason else ""
        message = f"optional test dependency {module_name!r} is missing{needed}: {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{message}. CI=true, so this fails instead of skipping: "
                f"{INSTALL_HINT}.",
                pytrace=False,
            )
        pytest.skip(f"{message}; {INSTALL_HINT} to run it.", allow_module_level=True)
