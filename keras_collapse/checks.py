"""Argument checks shared by every public function and class, so that one
argument is judged the same way wherever it is taken.

Each check raises a `ValueError` in Keras' style, naming what was expected
and what was received: "`name` must be .... Received: name=value". `what`
adds the argument's meaning after the expectation ("a number in [0, 1), the
accuracy drop allowed").
"""

import math
import numbers
import warnings
from collections.abc import Hashable


def is_int(value):
    """Whether `value` is an integer (NumPy integers included, bools not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """Whether `value` is a real number (NumPy scalars included, bools not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(name, expected, value, what):
    meaning = f", {what}" if what else ""
    raise ValueError(
        f"`{name}` must be {expected}{meaning}. Received: {name}={shown(value)}"
    )


def shown(value, limit=200):
    """`repr(value)` for a message, cut short: an array passed by mistake
    must not fill the screen."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def check_int(name, value, minimum=None, maximum=None, *, what=""):
    """Raises unless `value` is an int in `[minimum, maximum]`."""
    low = minimum is None or (is_int(value) and value >= minimum)
    high = maximum is None or (is_int(value) and value <= maximum)
    if not is_int(value) or not low or not high:
        _fail(name, _within("an int", minimum, maximum) or "an int", value, what)
    return int(value)


def check_bool(name, value, *, allow_none=False, what=""):
    """Raises unless `value` is `True` or `False` (1, "yes" are not; None
    only with `allow_none`)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        expected = "True, False or None" if allow_none else "True or False"
        _fail(name, expected, value, what)
    return value


def check_number(
    name,
    value,
    low=None,
    high=None,
    *,
    low_open=False,
    high_open=False,
    allow_none=False,
    what="",
):
    """Raises unless `value` is a finite number within the bounds.

    Args:
        name: str, the argument's name.
        value: what was received.
        low, high: the bounds, or None for none.
        low_open, high_open: bool, whether the bound itself is excluded.
        allow_none: bool, whether `None` is accepted (and returned).
        what: str, the argument's meaning, appended to the message.

    Returns:
        `value` as a float, or None.
    """
    if value is None and allow_none:
        return None
    ok = is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        expected = _within("a number", low, high, low_open, high_open)
        expected = expected or "a finite number"
        _fail(name, f"{expected} or None" if allow_none else expected, value, what)
    return float(value)


def check_fraction(name, value, *, zero=False, one=False, allow_none=False, what=""):
    """A number in (0, 1), with 0 and/or 1 allowed when `zero`/`one`."""
    return check_number(
        name,
        value,
        0,
        1,
        low_open=not zero,
        high_open=not one,
        allow_none=allow_none,
        what=what,
    )


def check_choice(name, value, choices, *, what=""):
    """Raises unless `value` is one of `choices` (strings compared as given;
    True is not 1)."""
    choices = list(choices)
    if not any(_same(value, choice) for choice in choices):
        _fail(name, f"one of {choices}", value, what)
    return value


def _same(value, choice):
    # `==` alone would take True for 1, and compare a list or an array
    # (unhashable) elementwise.
    if not isinstance(value, Hashable):
        return False
    return isinstance(value, bool) == isinstance(choice, bool) and value == choice


def check_model(name, value):
    """Raises unless `value` is a `keras.Model`."""
    import keras  # the package stays importable without Keras (the CLI)

    if not isinstance(value, keras.Model):
        raise ValueError(
            f"`{name}` must be a keras.Model. Received: {name}={shown(value)} of "
            f"type {type(value).__name__}"
        )
    return value


def renamed(kwargs, old, new, where):
    """Takes a renamed keyword argument out of `kwargs`: returns the value
    given under the old name (with a DeprecationWarning), or None if it was
    not given. The caller, which knows the new name's value, refuses both
    at once."""
    if old not in kwargs:
        return None
    value = kwargs.pop(old)
    warnings.warn(
        f"{where}: `{old}` is now called `{new}`; the old name will be "
        "removed in a future release.",
        DeprecationWarning,
        stacklevel=3,
    )
    return value


def _within(kind, low, high, low_open=False, high_open=False):
    """The expectation within the bounds ("an int in [1, 5]", "a number >
    0"), or None when there are none."""
    if low is not None and high is not None:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        return f"{kind} in {left}{low}, {high}{right}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return None
