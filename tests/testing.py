"""The suite's small base class: oracles, round trips, random data."""

import os

import keras
import numpy as np


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
