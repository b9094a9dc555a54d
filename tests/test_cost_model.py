"""Cost models: the MAC count and the measured one, and the surgery under
each (its result still computes what the model computes)."""

import json

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.cost_model import MeasuredCostModel
from tests.test_units import mobilenet_block
from tests.testing import TestCase
from tests.testing import slow_off_torch


class TestMeasuredCostModel(TestCase):
    def test_times_each_shape_once_and_caches_it(self, tmp_path, monkeypatch):
        path = tmp_path / "costs.json"
        model = MeasuredCostModel(repeats=2, cache_file=str(path))
        calls = []
        timed = MeasuredCostModel._time

        def counting(self, m):
            calls.append(m)
            return timed(self, m)

        monkeypatch.setattr(MeasuredCostModel, "_time", counting)
        monkeypatch.setattr(MeasuredCostModel, "_cache", {})
        first = model("conv", (3, 3, 4, 8), 64)
        assert first >= model.layer_overhead >= 0
        n = len(calls)
        assert model("conv", (3, 3, 4, 8), 64) == first
        assert len(calls) == n  # cached
        saved = json.loads(path.read_text())
        assert any("conv" in key and keras.backend.backend() in key for key in saved)
        # A new instance reads the file: no timing at all.
        monkeypatch.setattr(MeasuredCostModel, "_cache", {})
        again = MeasuredCostModel(repeats=2, cache_file=str(path))
        assert again("conv", (3, 3, 4, 8), 64) == first
        assert len(calls) == n

    @slow_off_torch
    def test_each_kind_builds_and_times(self, monkeypatch):
        monkeypatch.setattr(MeasuredCostModel, "_cache", {})
        model = MeasuredCostModel(repeats=1)
        for kind, shape, positions in (
            ("dense", (16, 8), 1),
            ("dense", (16, 8), 5),
            ("depthwise", (3, 3, 6, 1), 36),
            ("conv", (3, 4, 8), 10),  # Conv1D
            ("conv", (1, 1, 6, 6), 12),  # 12 positions: not a square
        ):
            assert np.isfinite(model(kind, shape, positions))

    @slow_off_torch
    def test_surgery_under_the_measured_model_is_exact(self):
        model = mobilenet_block()
        for layer in kc.collapsible_layers(model):
            layer.lock_linear()
        x = self.random_inputs((2, 8, 8, 8))
        small = kc.surgery(model, cost_model=MeasuredCostModel(repeats=1))
        self.assert_close(small(x), model(x), atol=1e-4)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="batch_size"):
            MeasuredCostModel(batch_size=0)
        with pytest.raises(ValueError, match="repeats"):
            MeasuredCostModel(repeats=True)
