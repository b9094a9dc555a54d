"""Cost models: the MAC count and the measured one, and the surgery under
each (its result still computes what the model computes)."""

import json
import math

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.surgery.cost_models import MeasuredCostModel
from tests.surgery.test_units import mobilenet_block
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


class TestCacheFile(TestCase):
    """Issue 23: the cache file is checked when the cost model is made,
    before any timing, and named in every error."""

    def test_a_folder_that_does_not_exist(self, tmp_path):
        path = tmp_path / "nowhere" / "costs.json"
        with pytest.raises(ValueError, match=r"folder that exists.*nowhere"):
            MeasuredCostModel(cache_file=str(path))
        with pytest.raises(ValueError, match="not a folder"):
            MeasuredCostModel(cache_file=str(tmp_path))
        with pytest.raises(ValueError, match="path of a JSON file"):
            MeasuredCostModel(cache_file=3)

    @pytest.mark.parametrize(
        "content, match",
        [
            ("[1, 2]", "JSON object of costs.*Received a JSON list"),
            ("{bad", "is not a valid JSON file"),
            ('{"a": "12"}', "finite number of microseconds.*'a': '12'"),
            ('{"a": NaN}', "finite number of microseconds.*'a': nan"),
        ],
    )
    def test_a_bad_file_is_named(self, tmp_path, monkeypatch, content, match):
        monkeypatch.setattr(MeasuredCostModel, "_cache", {})
        path = tmp_path / "costs.json"
        path.write_text(content)
        with pytest.raises(ValueError, match=match) as raised:
            MeasuredCostModel(cache_file=path)
        assert str(path) in str(raised.value)
        assert MeasuredCostModel._cache == {}  # nothing of it was taken

    def test_a_path_object_and_a_good_file(self, tmp_path, monkeypatch):
        monkeypatch.setattr(MeasuredCostModel, "_cache", {})
        path = tmp_path / "costs.json"
        path.write_text('{"k": 2}')
        model = MeasuredCostModel(cache_file=path)
        assert model.cache_file == str(path) and MeasuredCostModel._cache == {"k": 2.0}


def dense_chain():
    """Two Dense layers with nothing between: the surgery prices a merge."""
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, name="fc1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, name="fc2")(h))


class TestBadCosts(TestCase):
    """Issue 23: a cost that is not a finite number is refused, naming the
    layer, instead of a raw TypeError (or a NaN that never compares)."""

    @pytest.mark.parametrize(
        "cost, shown",
        [(float("nan"), "nan"), ("12", "'12'"), (None, "None"), (math.inf, "inf")],
    )
    def test_surgery_and_merge_units(self, cost, shown):
        def cost_model(kind, kernel_shape, output_positions):
            return cost

        match = rf"finite number.*Received: {shown} .*layer 'fc1'"
        with pytest.raises(ValueError, match=match):
            kc.surgery(dense_chain(), cost_model=cost_model)
        with pytest.raises(ValueError, match="finite number"):
            kc.merge_units(mobilenet_block(), cost_model=cost_model)

    def test_numpy_numbers_are_costs(self):
        def cost_model(kind, kernel_shape, output_positions):
            return np.float32(np.prod(kernel_shape) * output_positions)

        small = kc.surgery(dense_chain(), cost_model=cost_model)
        assert len(small.layers) == 2  # the input and one merged Dense

    def test_bad_layer_overhead(self):
        priced = kc.MacCostModel()
        priced.layer_overhead = "a lot"
        with pytest.raises(ValueError, match="layer_overhead.*'a lot'"):
            kc.merge_units(mobilenet_block(), cost_model=priced)
