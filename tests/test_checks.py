"""`keras_collapse.checks`: each check accepts what it should, refuses the
rest, and says so in Keras' words: "`name` must be .... Received: name=..."."""

import re
import warnings

import keras
import numpy as np
import pytest

from keras_collapse import checks


def refused(check, name, *args, **kwargs):
    """The message of the ValueError `check(name, *args, **kwargs)` raises,
    checked for Keras' form."""
    with pytest.raises(ValueError) as caught:
        check(name, *args, **kwargs)
    message = str(caught.value)
    assert message.startswith(f"`{name}` must be "), message
    assert re.search(rf"\. Received: {name}=", message), message
    return message


class TestPredicates:
    @pytest.mark.parametrize("value", [0, -3, 2**70, np.int64(5), np.uint8(1)])
    def test_ints(self, value):
        assert checks.is_int(value) and checks.is_number(value)

    @pytest.mark.parametrize("value", [True, False, np.bool_(True)])
    def test_bools_are_not_numbers(self, value):
        assert not checks.is_int(value) and not checks.is_number(value)

    @pytest.mark.parametrize("value", [0.5, np.float32(0.5), float("nan")])
    def test_floats_are_numbers_not_ints(self, value):
        assert checks.is_number(value) and not checks.is_int(value)

    @pytest.mark.parametrize("value", ["1", None, [1], np.array([1]), 1j])
    def test_the_rest_is_neither(self, value):
        assert not checks.is_int(value) and not checks.is_number(value)


class TestCheckInt:
    def test_accepts_and_returns_a_python_int(self):
        result = checks.check_int("n", np.int64(3), 1, 5)
        assert result == 3 and type(result) is int
        assert checks.check_int("n", 1, 1, 5) == 1  # bounds included
        assert checks.check_int("n", 5, 1, 5) == 5
        assert checks.check_int("n", -7) == -7

    @pytest.mark.parametrize(
        "value, minimum, maximum, expected",
        [
            (0, 1, 5, "an int in [1, 5]"),
            (6, 1, 5, "an int in [1, 5]"),
            (0, 1, None, "an int >= 1"),
            (9, None, 8, "an int <= 8"),
            (2.0, None, None, "an int"),
            (True, 0, None, "an int >= 0"),
            ("3", 0, None, "an int >= 0"),
            (None, 0, None, "an int >= 0"),
        ],
    )
    def test_refuses(self, value, minimum, maximum, expected):
        message = refused(checks.check_int, "repeats", value, minimum, maximum)
        assert message == f"`repeats` must be {expected}. Received: repeats={value!r}"

    def test_what_gives_the_meaning(self):
        message = refused(checks.check_int, "samples", 0, 1, what="the rows")
        assert message == "`samples` must be an int >= 1, the rows. Received: samples=0"


class TestCheckBool:
    def test_accepts_bools(self):
        assert checks.check_bool("verify", True) is True
        assert checks.check_bool("verify", False) is False

    @pytest.mark.parametrize("value", [1, 0, "yes", None, np.bool_(True)])
    def test_refuses_the_rest(self, value):
        message = refused(checks.check_bool, "verify", value)
        assert "must be True or False. Received: verify=" in message

    def test_none_when_allowed(self):
        assert checks.check_bool("trainable", None, allow_none=True) is None
        message = refused(checks.check_bool, "trainable", "no", allow_none=True)
        assert "must be True, False or None." in message


class TestCheckNumber:
    def test_accepts_and_returns_a_float(self):
        result = checks.check_number("tolerance", np.float32(0.5), 0, 1)
        assert result == 0.5 and type(result) is float
        assert checks.check_number("tolerance", 3) == 3.0
        assert checks.check_number("t", 0, 0, 1) == 0.0  # closed bounds
        assert checks.check_number("t", 1, 0, 1) == 1.0

    @pytest.mark.parametrize(
        "value, kwargs, expected",
        [
            (0, dict(low=0, high=1, low_open=True), "a number in (0, 1]"),
            (1, dict(low=0, high=1, high_open=True), "a number in [0, 1)"),
            (-1, dict(low=0), "a number >= 0"),
            (0, dict(low=0, low_open=True), "a number > 0"),
            (2, dict(high=1), "a number <= 1"),
            (1, dict(high=1, high_open=True), "a number < 1"),
            (float("nan"), {}, "a finite number"),
            (float("inf"), dict(low=0), "a number >= 0"),
            (True, {}, "a finite number"),
            ("0.1", {}, "a finite number"),
            (None, dict(low=0), "a number >= 0"),
        ],
    )
    def test_refuses(self, value, kwargs, expected):
        message = refused(checks.check_number, "tolerance", value, **kwargs)
        assert message == (
            f"`tolerance` must be {expected}. Received: tolerance={value!r}"
        )

    def test_none_when_allowed(self):
        assert checks.check_number("t", None, 0, allow_none=True) is None
        message = refused(checks.check_number, "t", -1, 0, allow_none=True)
        assert "must be a number >= 0 or None." in message

    def test_what_gives_the_meaning(self):
        message = refused(
            checks.check_number, "tolerance", 2, 0, 1, what="the drop allowed"
        )
        assert message.startswith("`tolerance` must be a number in [0, 1], the drop")


class TestCheckFraction:
    def test_open_by_default(self):
        assert checks.check_fraction("f", 0.5) == 0.5
        assert "(0, 1)" in refused(checks.check_fraction, "f", 0)
        assert "(0, 1)" in refused(checks.check_fraction, "f", 1)

    def test_ends_allowed_when_asked(self):
        assert checks.check_fraction("f", 0, zero=True) == 0.0
        assert checks.check_fraction("f", 1, one=True) == 1.0
        assert "[0, 1]" in refused(checks.check_fraction, "f", 2, zero=True, one=True)
        assert checks.check_fraction("f", None, allow_none=True) is None


class TestCheckChoice:
    def test_accepts_a_choice(self):
        assert checks.check_choice("mode", "min", ["min", "max"]) == "min"
        assert checks.check_choice("mode", None, ("auto", None)) is None
        assert checks.check_choice("n", np.int64(2), [1, 2]) == 2

    @pytest.mark.parametrize("value", ["MIN", "high", ["min"], {"min": 1}, None])
    def test_refuses_the_rest(self, value):
        message = refused(checks.check_choice, "mode", value, ["min", "max"])
        assert "must be one of ['min', 'max']. Received: mode=" in message

    def test_true_is_not_1_and_an_array_not_a_choice(self):
        refused(checks.check_choice, "n", True, [1, 2])
        refused(checks.check_choice, "n", np.array([1]), [1, 2])

    def test_choices_may_be_any_iterable(self):
        assert checks.check_choice("m", "b", iter("ab")) == "b"


class TestCheckModel:
    def test_accepts_a_model(self):
        inputs = keras.Input((2,))
        model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
        assert checks.check_model("model", model) is model

    @pytest.mark.parametrize("value", [None, "model.keras", keras.layers.Dense(1)])
    def test_refuses_the_rest(self, value):
        message = refused(checks.check_model, "model", value)
        assert f"of type {type(value).__name__}" in message


class TestMessages:
    def test_a_long_value_is_cut_short(self):
        message = refused(checks.check_bool, "verify", list(range(1000)))
        assert len(message) < 300 and message.endswith("...")


class TestRenamed:
    def test_the_old_name_warns_and_is_taken_out(self):
        kwargs = {"validation_samples": 64, "other": 1}
        with pytest.warns(DeprecationWarning, match="`validation_samples` is now"):
            value = checks.renamed(kwargs, "validation_samples", "samples", "TLC")
        assert value == 64 and kwargs == {"other": 1}

    def test_absent_is_none_and_quiet(self):
        kwargs = {"other": 1}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert checks.renamed(kwargs, "old", "new", "f") is None
        assert kwargs == {"other": 1}
