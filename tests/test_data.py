"""Reading the data users pass (keras_collapse/data.py): what is refused,
with what message, and integer arrays cast as `predict` casts them."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse import data as data_lib
from tests.testing import TestCase

layers = keras.layers


def one_input():
    inputs = keras.Input((3,))
    h = kc.CollapsiblePReLU(name="act")(layers.Dense(4)(inputs))
    return keras.Model(inputs, layers.Dense(2)(h))


def two_inputs():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = layers.BatchNormalization()(layers.Dense(4)(layers.Concatenate()([a, b])))
    h = kc.CollapsiblePReLU(name="act")(h)
    return keras.Model([a, b], layers.Dense(1)(h))


class TestRefused(TestCase):
    @pytest.mark.parametrize(
        "data",
        [
            [[0.1, 0.2, 0.3]] * 5,
            ([[0.1, 0.2, 0.3]] * 5, [0, 1, 0, 1, 0]),
            (np.zeros((5, 3), "float32"), [0, 1, 0, 1, 0]),
        ],
        ids=["x", "x_y", "y"],
    )
    def test_python_lists_of_numbers(self, data):
        # Was `TypeError: len() of unsized object`.
        with pytest.raises(ValueError, match=r"not Python lists.*np\.asarray"):
            kc.activation_statistics(one_input(), data)
        with pytest.raises(ValueError, match=r"Received: a (list|tuple) holding"):
            data_lib.take_sample(data, 4, what="data")

    @pytest.mark.parametrize(
        "x",
        [
            [np.zeros((8, 3)), np.zeros((6, 2))],
            {"a": np.zeros((8, 3)), "b": np.zeros((6, 2))},
        ],
        ids=["list", "dict"],
    )
    def test_inputs_with_different_row_counts(self, x):
        # Was "`data` has 1 array(s)": the list read as a list of batches.
        match = r"same number of rows.*Received 2 arrays with \[8, 6\] rows"
        for data in (x, (x, np.zeros(8))):
            with pytest.raises(ValueError, match=match):
                kc.activation_statistics(two_inputs(), data)
            with pytest.raises(ValueError, match=match):
                kc.recalibrate_batchnorm(two_inputs(), data, in_place=True)

    def test_a_batch_without_a_batch_axis(self):
        batches = [np.zeros((4, 3), "float32"), np.float32(1.0)]
        with pytest.raises(ValueError, match="batch axis"):
            kc.activation_statistics(one_input(), iter(batches), max_samples=10)

    def test_what_still_reads(self):
        # A list of batches of different sizes, one array per input.
        model = two_inputs()
        x = [np.ones((8, 3), "float32"), np.ones((8, 2), "float32")]
        batches = [(x[0][:5], x[1][:5]), (x[0][5:], x[1][5:])]
        assert kc.activation_statistics(model, x).samples == 8
        assert kc.activation_statistics(model, [list(b) for b in batches]).samples == 8
        single = [np.ones((5, 3), "float32"), np.ones((3, 3), "float32")]
        assert kc.activation_statistics(one_input(), single).samples == 8


class TestCast(TestCase):
    def test_cast_to_each_input_dtype(self):
        inputs = [
            keras.Input((3,), name="pixels"),
            keras.Input((2,), dtype="int32", name="ids"),
        ]
        model = keras.Model(inputs, layers.Concatenate()([inputs[0], inputs[0]]))
        x = [np.arange(6, dtype="uint8").reshape(2, 3), np.ones((2, 2), "int64")]
        pixels, ids = data_lib.cast_inputs(model, x)
        assert pixels.dtype == np.float32 and ids.dtype == np.int32
        np.testing.assert_array_equal(pixels, x[0])
        by_name = data_lib.cast_inputs(model, {"ids": x[1], "pixels": x[0]})
        assert [a.dtype for a in by_name] == [np.float32, np.int32]
        same = np.zeros((2, 3), "float32")
        assert data_lib.cast_inputs(one_input(), same) is same
