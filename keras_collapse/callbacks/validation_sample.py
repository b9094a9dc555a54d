"""A fixed validation sample: the same rows every time a callback measures."""

import keras
import numpy as np


def take_sample(data, size, seed):
    """Draws `size` rows (fewer if there are fewer) from validation data.

    Args:
        data: a tuple `(x, y)` or `(x, y, sample_weight)` of arrays (x and y
            may be lists/dicts of arrays), or an iterable of such batches
            (a `tf.data.Dataset`, a `keras.utils.PyDataset`, a torch
            `DataLoader`), read until `size` rows are collected.
        size: int, the number of rows.
        seed: int, for the choice of rows among arrays.

    Returns:
        `(x, y, sample_weight)` of NumPy arrays (`sample_weight` may be None).

    Raises:
        ValueError: if `data` is none of the above, or empty.
    """
    if isinstance(data, (tuple, list)) and 2 <= len(data) <= 3:
        x, y, w = (*data, None)[:3]
        rows = _rows(x)
        if rows == 0:
            raise ValueError("`validation_data` is empty: expected at least one row.")
        index = np.sort(np.random.default_rng(seed).permutation(rows)[:size])
        return tuple(
            None if part is None else _map(lambda a: _numpy(a)[index], part)
            for part in (x, y, w)
        )
    batches = _batches(data)
    if batches is None:
        raise ValueError(
            "`validation_data` must be a tuple `(x, y)` or `(x, y, sample_weight)` "
            "of arrays, or an iterable of such batches (tf.data.Dataset, "
            f"PyDataset, DataLoader). Received: {type(data).__name__}"
        )
    parts, count = [], 0
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or not 2 <= len(batch) <= 3:
            raise ValueError(
                "Each batch of `validation_data` must be `(x, y)` or "
                f"`(x, y, sample_weight)`. Received: {type(batch).__name__}"
            )
        batch = tuple(_map(_numpy, part) for part in (*batch, None)[:3])
        parts.append(batch)
        count += _rows(batch[0])
        if count >= size:
            break
    if not parts:
        raise ValueError("`validation_data` is empty: expected at least one batch.")
    joined = tuple(
        None
        if parts[0][i] is None
        else keras.tree.map_structure(
            lambda *a: np.concatenate(a)[:size], *[p[i] for p in parts]
        )
        for i in range(3)
    )
    return joined


def _batches(data):
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return (data[i] for i in range(len(data)))  # PyDataset, Sequence
    if hasattr(data, "__iter__"):
        return iter(data)
    return None


def _map(fn, structure):
    return keras.tree.map_structure(fn, structure)


def _numpy(a):
    return np.asarray(keras.ops.convert_to_numpy(a))


def _rows(x):
    return len(keras.tree.flatten(x)[0])
