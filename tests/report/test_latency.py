import math

import keras
import numpy as np
import pytest

from keras_collapse.report import latency
from keras_collapse.report import measure_latency
from tests.testing import TestCase

FAST = {"warmup": 1, "repeats": 3}


def mlp(name, features=6, width=8):
    inputs = keras.Input((features,))
    x = keras.layers.Dense(width, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name=name)


def image_model(name, shape=(None, None, 3)):
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name=name)


class TestMeasureLatency(TestCase):
    def test_result_structure(self):
        models = {"small": mlp("a"), "wide": mlp("b", width=32)}
        result = measure_latency(models, batch_sizes=(1, 4), **FAST)

        assert result["backend"] == keras.backend.backend()
        assert result["batch_sizes"] == [1, 4]
        assert (result["warmup"], result["repeats"]) == (1, 3)
        assert result["reference"] == "small"
        assert list(result["models"]) == ["small", "wide"]
        for entry in result["models"].values():
            for size in (1, 4):
                medians = entry["medians"][size]
                assert set(medians) == {"call", "predict_on_batch"}
                assert entry["path"][size] == min(medians, key=medians.get)
                assert entry["seconds"][size] == min(medians.values()) > 0
        wide, small = result["models"]["wide"], result["models"]["small"]
        assert small["speedup"] == {1: 1.0, 4: 1.0}
        assert wide["speedup"][4] == small["seconds"][4] / wide["seconds"][4]

    def test_a_model_against_itself(self):
        model = mlp("same")
        result = measure_latency({"x": model, "y": model}, batch_sizes=(2,), **FAST)
        speedup = result["models"]["y"]["speedup"][2]
        assert math.isfinite(speedup) and speedup > 0

    def test_a_list_is_labelled_by_model_names(self):
        result = measure_latency([mlp("first"), mlp("second")], batch_sizes=1, **FAST)
        assert list(result["models"]) == ["first", "second"]
        assert result["batch_sizes"] == [1]

    def test_models_are_interleaved_on_the_same_inputs(self, monkeypatch):
        calls = []

        def recording(path):
            def run(model, x):
                calls.append((model.name, path, keras.ops.convert_to_numpy(x)))
                return model(x, training=False)

            return run

        monkeypatch.setattr(
            latency, "CALL_PATHS", {p: recording(p) for p in ("call", "predict")}
        )
        models = [mlp("a"), mlp("b"), mlp("c")]
        measure_latency(models, batch_sizes=(3,), warmup=1, repeats=3)

        timed = calls[len(models) * 2 :]  # after one warm-up call per path
        order = [name for name, path, _ in timed if path == "call"]
        assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
        for _, _, x in calls:
            np.testing.assert_array_equal(x, calls[0][2])
        assert calls[0][2].shape == (3, 6)

    def test_input_shape_sets_unknown_axes(self):
        result = measure_latency(
            [image_model("a"), image_model("b", (5, None, 3))],
            batch_sizes=(1,),
            input_shape=(5, 7, 3),
            **FAST,
        )
        assert result["models"]["b"]["seconds"][1] > 0

    def test_two_inputs(self):
        left, right = keras.Input((3,)), keras.Input((4,))
        joined = keras.layers.Concatenate()([left, right])
        model = keras.Model([left, right], keras.layers.Dense(2)(joined))
        result = measure_latency([model], batch_sizes=(2,), **FAST)
        assert result["models"][model.name]["speedup"][2] == 1.0


class TestArguments(TestCase):
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"models": []}, "at least one model"),
            ({"models": {}}, "at least one model"),
            ({"models": "model"}, "must be a list of keras.Model"),
            ({"models": [object()]}, r"`models\[None\]` must be a keras.Model"),
            ({"batch_sizes": ()}, "non-empty sequence of positive ints"),
            ({"batch_sizes": (0,)}, "non-empty sequence of positive ints"),
            ({"batch_sizes": ("1",)}, "non-empty sequence of positive ints"),
            ({"warmup": -1}, "`warmup` must be an int >= 0"),
            ({"repeats": 0}, "`repeats` must be an int >= 1"),
            ({"repeats": 1.5}, "`repeats` must be an int >= 1"),
            ({"seed": -3}, "`seed` must be an int >= 0"),
            ({"input_shape": (2, 2)}, "does not fit the model input"),
        ],
    )
    def test_rejects_bad_arguments(self, kwargs, match):
        arguments = {"models": [mlp("m")], **kwargs}
        with pytest.raises(ValueError, match=match):
            measure_latency(**arguments)

    def test_rejects_a_list_of_models_with_the_same_name(self):
        with pytest.raises(ValueError, match="names, which must be distinct"):
            measure_latency([mlp("twin"), mlp("twin")], **FAST)

    def test_rejects_models_with_different_inputs(self):
        with pytest.raises(ValueError, match="must take the same inputs"):
            measure_latency([mlp("a"), mlp("b", features=5)], **FAST)

    def test_rejects_unknown_axes_without_input_shape(self):
        with pytest.raises(ValueError, match="Pass `input_shape`"):
            measure_latency([image_model("a")], **FAST)
