"""Reading the data users pass: arrays, `(x, y[, w])` tuples, tf.data,
`keras.utils.PyDataset`, a torch `DataLoader`, or any iterable of batches.

One home for it: the statistics, the BatchNorm re-estimation and the
callbacks' fixed samples all read data here, with the same rules and the same
errors. Batches come out as NumPy (nested like the model's inputs).
"""

import inspect
import itertools
import numbers

import keras
import numpy as np


def unpack(batch, n_inputs=None):
    """`(x, y, sample_weight)` of one batch, as Keras reads a batch: a tuple
    of 2 or 3 is `(x, y[, w])`, a tuple of 1 is `(x,)`, anything else is x.
    A list is read as a tuple (a torch `DataLoader` yields `[x, y]`), unless
    it is the `n_inputs` arrays of a multi-input model's x."""
    if isinstance(batch, list) and not (
        n_inputs
        and n_inputs > 1
        and len(batch) == n_inputs
        and _is_array_structure(batch, n_inputs)
    ):
        batch = tuple(batch)
    if isinstance(batch, tuple):
        if len(batch) == 1:
            return batch[0], None, None
        if len(batch) in (2, 3):
            return (*batch, None)[:3]
    return batch, None, None


def to_numpy(a):
    """A NumPy array from a NumPy, Keras-backend, tf or torch tensor."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):  # torch, whatever the Keras backend
        return a.detach().cpu().numpy()
    if hasattr(a, "numpy") and not hasattr(a, "__array_namespace__"):
        return np.asarray(a.numpy())  # tf.Tensor
    return np.asarray(keras.ops.convert_to_numpy(a))


def rows(x):
    """The number of rows (batch size) of `x` (a structure of arrays)."""
    return len(keras.tree.flatten(x)[0])


def _is_array(a):
    return hasattr(a, "shape") and hasattr(a, "dtype") and len(a.shape) >= 1


def _is_array_structure(x, n_inputs=None):
    """Whether `x` is model input data held whole: an array, or a dict /
    list of arrays (one per model input) with the same number of rows."""
    if _is_array(x):
        return True
    if isinstance(x, dict):
        parts = list(x.values())
    elif isinstance(x, (list, tuple)):
        if n_inputs is not None and len(x) != n_inputs:
            return False
        parts = list(x)
    else:
        return False
    return bool(parts) and all(_is_array(p) and len(p) == len(parts[0]) for p in parts)


def iter_batches(data, batch_size, *, n_inputs=None, max_samples=None, what="data"):
    """Yields `(x, y, w)` batches of NumPy arrays (y, w may be None).

    Args:
        data: arrays (`x`, or a tuple `(x, y)` / `(x, y, sample_weight)`;
            x may be a list / dict of arrays for a multi-input model), or an
            iterable of such batches (tf.data, PyDataset, DataLoader, list,
            generator).
        batch_size: int, the rows per batch when `data` holds arrays (the
            batches of an iterable are taken as they come).
        n_inputs: int or None, the model's number of inputs (tells a list of
            input arrays from a list of batches).
        max_samples: int or None, stop after this many rows.
        what: str, the argument's name in error messages.

    Raises:
        ValueError: for data of another kind, an endless iterable without
            `max_samples`, or no rows at all.
    """
    limit = np.inf if max_samples is None else max_samples
    count = 0
    for batch in _batches(data, batch_size, n_inputs, max_samples, what):
        x, y, w = (
            None if part is None else keras.tree.map_structure(to_numpy, part)
            for part in unpack(batch, n_inputs)
        )
        _check_batch(x, what)
        n = rows(x)
        if count + n > limit:
            keep = int(limit - count)
            x, y, w = (
                None
                if p is None
                else keras.tree.map_structure(lambda a, k=keep: a[:k], p)
                for p in (x, y, w)
            )
            n = keep
        if n == 0:
            break
        count += n
        yield x, y, w
        if count >= limit:
            break
    if count == 0:
        raise ValueError(f"`{what}` is empty: expected at least one row.")


def _batches(data, batch_size, n_inputs, max_samples, what):
    _refuse_python_numbers(data, what)
    _check_input_rows(data, n_inputs, what)
    if isinstance(data, tuple) and 1 <= len(data) <= 3:
        _check_input_rows(data[0], n_inputs, what)
    if (
        isinstance(data, tuple)
        and 1 <= len(data) <= 3
        and _is_array_structure(data[0], n_inputs)
    ):
        return _slices(data if len(data) > 1 else data[0], batch_size)
    if _is_array_structure(data, n_inputs):
        return _slices(data, batch_size)
    if inspect.isgenerator(data) or (hasattr(data, "__next__") and iter(data) is data):
        if max_samples is None:
            raise ValueError(
                f"`{what}` is an iterator of unknown length, which may never end: "
                "pass `max_samples` (the number of rows to read), or arrays. "
                f"Received: {type(data).__name__}"
            )
        return data
    if _is_endless_dataset(data) and max_samples is None:
        raise ValueError(
            f"`{what}` is an endless tf.data.Dataset (`repeat()` without a "
            "count): pass `max_samples` (the number of rows to read)."
        )
    if isinstance(data, keras.utils.PyDataset):
        size = data.num_batches
        if size is None and max_samples is None:
            raise ValueError(
                f"`{what}` is a PyDataset without `num_batches` (endless): pass "
                "`max_samples`."
            )
        steps = itertools.count() if size is None else range(size)
        return (data[i] for i in steps)
    if hasattr(data, "__iter__") and not isinstance(data, (str, bytes, dict)):
        return iter(data)
    raise ValueError(
        f"`{what}` must be arrays (x, or a tuple (x, y) / (x, y, sample_weight)) "
        "or an iterable of such batches (tf.data.Dataset, keras.utils.PyDataset, "
        f"torch DataLoader, a list or generator). Received: {type(data).__name__}"
    )


def _refuse_python_numbers(data, what):
    """Raises a ValueError when list / tuple `data` holds Python numbers
    (a nested list of values): it is read as arrays only as arrays."""
    if not isinstance(data, (list, tuple)):
        return
    leaf = next(
        (
            leaf
            for leaf in keras.tree.flatten(data)
            if isinstance(leaf, (numbers.Number, np.generic))
        ),
        None,
    )
    if leaf is not None:
        raise ValueError(
            f"`{what}` must hold arrays (NumPy arrays or tensors, a row per "
            "sample), not Python lists of numbers: pass `np.asarray(...)` for "
            f"x (and y). Received: a {type(data).__name__} holding "
            f"{type(leaf).__name__} values, e.g. {leaf!r}"
        )


def _check_input_rows(x, n_inputs, what):
    """Raises a ValueError when `x` is the arrays of a multi-input model's
    inputs (a dict of arrays, or a list / tuple of `n_inputs` arrays) whose
    numbers of rows differ."""
    if isinstance(x, dict):
        parts = list(x.values())
    elif isinstance(x, (list, tuple)) and n_inputs and n_inputs > 1:
        parts = list(x) if len(x) == n_inputs else []
    else:
        return
    if len(parts) < 2 or not all(_is_array(p) for p in parts):
        return
    counts = [len(p) for p in parts]
    if len(set(counts)) > 1:
        shapes = (
            {k: tuple(v.shape) for k, v in x.items()}
            if isinstance(x, dict)
            else [tuple(p.shape) for p in parts]
        )
        raise ValueError(
            f"`{what}` must hold one array per model input with the same "
            f"number of rows (one per sample). Received {len(parts)} arrays "
            f"with {counts} rows: shapes {shapes}"
        )


def _check_batch(x, what):
    """Raises a ValueError unless every array of batch `x` has a batch axis."""
    for part in keras.tree.flatten(x):
        if np.ndim(part) == 0:
            raise ValueError(
                f"`{what}` must yield batches of arrays with a batch axis (a row "
                f"per sample). Received a batch holding a single value: {part!r}"
            )


def replayable(data, batch_size, n_inputs=None, max_samples=None, what="data"):
    """`data` itself when it can be read again; a one-shot iterator
    (generator) is read once (up to `max_samples` rows, which it needs) into
    a list of batches."""
    if inspect.isgenerator(data) or (hasattr(data, "__next__") and iter(data) is data):
        return list(
            iter_batches(
                data,
                batch_size,
                n_inputs=n_inputs,
                max_samples=max_samples,
                what=what,
            )
        )
    return data


def _is_endless_dataset(data):
    cardinality = getattr(data, "cardinality", None)
    if cardinality is None or not callable(cardinality):
        return False
    try:
        return int(to_numpy(cardinality())) == -1  # tf.data.INFINITE_CARDINALITY
    except Exception:
        return False


def _slices(arrays, batch_size):
    n = rows(arrays[0] if isinstance(arrays, tuple) else arrays)
    for start in range(0, n, batch_size):
        yield keras.tree.map_structure(lambda a, s=start: a[s : s + batch_size], arrays)


def take_sample(data, size, seed=0, *, n_inputs=None, labels=False, what="data"):
    """A fixed sample of at most `size` rows: the same rows every time.

    Rows are drawn at random (seeded) from arrays; an iterable is read in
    order until `size` rows are collected.

    Args:
        labels: bool, whether the sample must carry labels `y`.

    Returns:
        `(x, y, sample_weight)` of NumPy arrays (`y` / `w` may be None).

    Raises:
        ValueError: as `iter_batches`, or when `labels` and there are none.
    """
    _refuse_python_numbers(data, what)
    if isinstance(data, tuple) and _is_array_structure(data[0], n_inputs):
        n = rows(data[0])
        _check_same_rows(data, n, what)
        index = np.sort(np.random.default_rng(seed).permutation(n)[:size])
        data = tuple(
            keras.tree.map_structure(lambda a: to_numpy(a)[index], p) for p in data
        )
    elif _is_array_structure(data, n_inputs):
        n = rows(data)
        index = np.sort(np.random.default_rng(seed).permutation(n)[:size])
        data = keras.tree.map_structure(lambda a: to_numpy(a)[index], data)
    parts = list(
        iter_batches(data, size, n_inputs=n_inputs, max_samples=size, what=what)
    )
    if labels and parts[0][1] is None:
        raise ValueError(
            f"`{what}` needs labels: expected (x, y) or (x, y, sample_weight) "
            "arrays, or batches of them. Received inputs without labels."
        )
    return tuple(
        None
        if parts[0][i] is None
        else keras.tree.map_structure(
            lambda *a: np.concatenate(a), *[p[i] for p in parts]
        )
        for i in range(3)
    )


def _check_same_rows(parts, n, what):
    """Raises a ValueError unless every array of `(x, y[, w])` has n rows."""
    names = ("x", "y", "sample_weight")
    counts = [
        {rows(a) for a in keras.tree.flatten(p)} if p is not None else {n}
        for p in parts
    ]
    if any(c != {n} for c in counts):
        found = ", ".join(
            f"{name}: {sorted(c)[0] if len(c) == 1 else sorted(c)} rows"
            for name, c, p in zip(names, counts, parts)
            if p is not None
        )
        raise ValueError(
            f"`{what}` must hold as many labels (and weights) as inputs, row "
            f"for row. Received {found}."
        )


def check_inputs(model, x, what="data"):
    """Raises a ValueError unless `x` fits `model`'s inputs (structure and
    shapes, batch axis aside) and is finite."""
    expected = model.inputs
    parts = keras.tree.flatten(x)
    if isinstance(x, dict):
        names = [t.name for t in expected]
        missing = sorted(set(names) - set(x))
        if missing:
            raise ValueError(
                f"`{what}` is a dict without the model input(s) {missing}. "
                f"Expected keys {names}. Received keys {sorted(x)}"
            )
        parts = [x[n] for n in names]
    if len(parts) != len(expected):
        raise ValueError(
            f"Model '{model.name}' takes {len(expected)} input(s) of shapes "
            f"{[tuple(t.shape) for t in expected]}; `{what}` has {len(parts)} "
            f"array(s) of shapes {[tuple(np.shape(p)) for p in parts]}."
        )
    for tensor, part in zip(expected, parts):
        want, got = tuple(tensor.shape), tuple(np.shape(part))
        if len(want) != len(got) or any(
            w is not None and w != g for w, g in zip(want[1:], got[1:])
        ):
            raise ValueError(
                f"`{what}` does not fit input '{tensor.name}' of model "
                f"'{model.name}': expected shape {want} (None: any size), "
                f"received {got}."
            )
        if np.issubdtype(np.asarray(part).dtype, np.floating) and not np.all(
            np.isfinite(part)
        ):
            raise ValueError(
                f"`{what}` has non-finite values (NaN or inf) for input "
                f"'{tensor.name}': statistics over them would be meaningless. "
                "Clean the data first."
            )


def cast_inputs(model, x):
    """`x` as `model.predict` gives it to the model: each array cast to the
    dtype of its model input (uint8 images to float32, int64 token ids to
    int32), in the order of `model.inputs` (a dict by input name). Models
    built from layers (probes) do not cast their inputs as a Functional model
    does, and a Conv on uint8 fails on every backend.

    Returns:
        One NumPy array for a single-input model, else a list.
    """
    if isinstance(x, dict):
        parts = [x[t.name] for t in model.inputs]
    else:
        parts = keras.tree.flatten(x)
    cast = [_cast(part, t.dtype) for part, t in zip(parts, model.inputs)]
    return cast[0] if len(cast) == 1 else cast


def _cast(array, dtype):
    array = to_numpy(array)
    want = keras.backend.standardize_dtype(dtype)
    if keras.backend.standardize_dtype(array.dtype) == want:
        return array
    try:
        return array.astype(np.dtype(want))
    except TypeError:  # a dtype NumPy does not name (bfloat16)
        return keras.ops.convert_to_numpy(keras.ops.cast(array, want))
