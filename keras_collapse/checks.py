"""Argument checks shared by the public functions and classes."""

import numbers


def is_int(value):
    """Whether `value` is an integer (NumPy integers included, bools not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name, value, minimum):
    """Raises a ValueError unless `value` is an int >= `minimum`."""
    if not is_int(value) or value < minimum:
        raise ValueError(
            f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}"
        )
