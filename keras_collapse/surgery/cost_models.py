"""How the surgery prices a layer, to take only merges that make a model cheaper.

Shallower is not always faster: two 3x3 convs (18 C^2 MACs per pixel) merge
into a 5x5 (25 C^2). The surgery merges a run of linear layers only where the
merged layer costs no more than the layers it replaces.
"""

import json
import math
import numbers
import os

import keras
import numpy as np

from keras_collapse.checks import check_int
from keras_collapse.report.latency import measure_latency


class MacCostModel:
    """Prices a layer by its multiply-accumulates, plus a fixed cost per layer.

    `cost = macs * (depthwise_factor if depthwise else 1) + layer_overhead`

    The defaults count MACs alone. On backends where every layer has a fixed
    dispatch cost (PyTorch eager: ~0.25 ms per Keras layer) a `layer_overhead`
    of a few million MACs favours fewer layers; where depthwise convolutions
    run far below peak (XLA:CPU, ~100x per MAC), `depthwise_factor` > 1
    favours merging them into dense convolutions.

    Any callable with the signature of `__call__` can replace it
    (`surgery(model, cost_model=my_callable)`).

    Args:
        layer_overhead: float, cost added per layer, in MAC units.
            Defaults to `0.0`.
        depthwise_factor: float, weight of a depthwise MAC relative to a
            dense one. Defaults to `1.0`.
    """

    def __init__(self, layer_overhead=0.0, depthwise_factor=1.0):
        for name, value in (
            ("layer_overhead", layer_overhead),
            ("depthwise_factor", depthwise_factor),
        ):
            if (
                not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"`{name}` must be a finite number >= 0. Received: {name}={value!r}"
                )
        self.layer_overhead = float(layer_overhead)
        self.depthwise_factor = float(depthwise_factor)

    def __call__(self, kind, kernel_shape, output_positions):
        """Cost of one layer for one sample.

        Args:
            kind: str, "dense", "conv" or "depthwise".
            kernel_shape: tuple, the Keras kernel shape (`[k.., in, out]`,
                depthwise `[k.., C, multiplier]`, dense `[in, out]`).
            output_positions: int, output positions per sample (product of
                the output's spatial sizes; for Dense, of its leading axes).
        """
        macs = math.prod(kernel_shape) * output_positions
        if kind == "depthwise":
            macs *= self.depthwise_factor
        return macs + self.layer_overhead

    def __repr__(self):
        return (
            f"MacCostModel(layer_overhead={self.layer_overhead}, "
            f"depthwise_factor={self.depthwise_factor})"
        )


class MeasuredCostModel:
    """Prices a layer by timing it on the current backend, once per shape.

    Which merge pays depends on the backend: PyTorch eager pays a fixed cost
    per layer, XLA:CPU runs a depthwise convolution far below a dense one of
    the same MACs. This model builds the layer alone (`Conv2D`,
    `DepthwiseConv2D` or `Dense` of the given kernel, "same" padding, an input
    with `output_positions` positions), times it on the faster of
    `model(x)` and `predict_on_batch(x)` (as `measure_latency` does), and
    subtracts what an empty call costs. `layer_overhead` is the measured cost
    of one more layer in a chain of cheap ones (~0 when compiled, the
    dispatch cost in eager mode); it is added to every layer, as the surgery's
    dry runs add it to every other layer. Costs are in microseconds and
    cached per process (and in `cache_file`, a JSON file, when given).

    `surgery(model, cost_model=MeasuredCostModel())` then merges what is
    faster here; the first call times each new shape (a few ms each).

    Args:
        batch_size: int >= 1, the batch the layers are timed at (the batch
            the result will serve). Defaults to 1.
        repeats: int >= 1, timed calls per shape (median). Defaults to 15.
        cache_file: str or None, a JSON file to read and extend. Defaults to
            None.
    """

    _cache = {}  # per process: key -> microseconds

    def __init__(self, batch_size=1, repeats=15, cache_file=None):
        check_int("batch_size", batch_size, 1)
        check_int("repeats", repeats, 1)
        self.batch_size = batch_size
        self.repeats = repeats
        self.cache_file = _check_cache_file(cache_file)
        if self.cache_file is not None and os.path.exists(self.cache_file):
            self._cache.update(_read_cache(self.cache_file))
        self._overhead = None

    def _key(self, *parts):
        return "|".join(
            str(p) for p in (keras.backend.backend(), self.batch_size, *parts)
        )

    @property
    def layer_overhead(self):
        """Microseconds one more (cheap) layer costs on this backend."""
        if self._overhead is None:
            key = self._key("overhead")
            if key not in self._cache:
                one = self._time(_chain(1))
                nine = self._time(_chain(9))
                self._store(key, max(nine - one, 0.0) / 8)
            self._overhead = self._cache[key]
        return self._overhead

    def __call__(self, kind, kernel_shape, output_positions):
        """Microseconds of one layer (see `MacCostModel.__call__`)."""
        key = self._key(
            kind, tuple(int(d) for d in kernel_shape), int(output_positions)
        )
        if key not in self._cache:
            empty = self._time(_chain(1))
            layer = self._time(_single_layer(kind, kernel_shape, output_positions))
            self._store(key, max(layer - empty, 0.0))
        return self._cache[key] + self.layer_overhead

    def _store(self, key, value):
        self._cache[key] = value
        if self.cache_file is not None:
            try:
                with open(self.cache_file, "w") as f:
                    json.dump(self._cache, f, indent=0, sort_keys=True)
            except OSError as e:
                raise OSError(
                    f"MeasuredCostModel could not write its cache_file "
                    f"{self.cache_file!r}: {e}"
                ) from e

    def _time(self, model):
        result = measure_latency(
            {"m": model}, batch_sizes=(self.batch_size,), repeats=self.repeats
        )
        return 1e6 * result["models"]["m"]["seconds"][self.batch_size]

    def __repr__(self):
        return (
            f"MeasuredCostModel(batch_size={self.batch_size}, "
            f"repeats={self.repeats}, cache_file={self.cache_file!r})"
        )


def price(cost_model, kind, kernel_shape, output_positions, layer):
    """`cost_model(kind, kernel_shape, output_positions)` as a float.

    Args:
        layer: str, what is priced, for the error ("layer 'conv1'", "the
            merge of 'a', 'b'").

    Raises:
        ValueError: unless the cost model returned a finite number: a NaN,
            an infinity or a string would make every comparison of costs
            meaningless (a NaN is never smaller, so nothing would merge).
    """
    cost = cost_model(kind, kernel_shape, output_positions)
    if not _is_finite_number(cost):
        call = f"({kind!r}, {tuple(int(d) for d in kernel_shape)}, {output_positions})"
        raise ValueError(
            "`cost_model` must return a finite number, the cost of a layer. "
            f"Received: {cost!r} ({type(cost).__name__}) for {layer}: "
            f"cost_model{call}"
        )
    return float(cost)


def layer_overhead(cost_model):
    """The cost model's `layer_overhead` (0 when it has none) as a float.

    Raises:
        ValueError: unless it is a finite number.
    """
    overhead = getattr(cost_model, "layer_overhead", 0.0)
    if not _is_finite_number(overhead):
        raise ValueError(
            "`cost_model.layer_overhead` must be a finite number, the cost of "
            f"one more layer. Received: layer_overhead={overhead!r}"
        )
    return float(overhead)


def _is_finite_number(value):
    """Whether `value` is a real number (a NumPy scalar or 0-d array too,
    bools not) and finite."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
    )


def _check_cache_file(cache_file):
    """`cache_file` as a str path, checked before any timing: None, or a
    file (existing or not) in a folder that exists."""
    if cache_file is None:
        return None
    if not isinstance(cache_file, (str, os.PathLike)):
        raise ValueError(
            "`cache_file` must be None or the path of a JSON file. Received: "
            f"cache_file={cache_file!r}"
        )
    path = os.fspath(cache_file)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(
            f"`cache_file` must be a file in a folder that exists: {folder!r} "
            f"does not (create it first). Received: cache_file={path!r}"
        )
    if os.path.isdir(path):
        raise ValueError(
            "`cache_file` must be the path of a JSON file, not a folder. "
            f"Received: cache_file={path!r}"
        )
    writable = os.access(path if os.path.exists(path) else folder, os.W_OK)
    if not writable:
        raise ValueError(
            f"`cache_file` must be writable (new timings are added to it): "
            f"{path!r} is not."
        )
    return path


def _read_cache(path):
    """The costs stored in cache file `path`: `{key: microseconds}`."""
    try:
        with open(path) as f:
            stored = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError included
        raise ValueError(
            f"`cache_file` {path!r} is not a valid JSON file ({e}). Delete it "
            "(it is re-made by timing) or pass another file."
        ) from None
    except OSError as e:
        raise ValueError(f"`cache_file` {path!r} cannot be read: {e}") from None
    if not isinstance(stored, dict):
        raise ValueError(
            f"`cache_file` {path!r} must hold a JSON object of costs (key -> "
            f"microseconds), as MeasuredCostModel writes it. Received a JSON "
            f"{type(stored).__name__}."
        )
    bad = {k: v for k, v in stored.items() if not _is_finite_number(v) or v < 0}
    if bad:
        key, value = next(iter(bad.items()))
        raise ValueError(
            f"`cache_file` {path!r} must map each key to a finite number of "
            f"microseconds >= 0. Received {len(bad)} value(s) that are not, e.g. "
            f"{key!r}: {value!r}"
        )
    return {k: float(v) for k, v in stored.items()}


def _spatial(positions, rank):
    side = round(positions ** (1 / rank)) if rank else 1
    if side**rank == positions:
        return (side,) * rank
    return (positions,) + (1,) * (rank - 1)


def _single_layer(kind, kernel_shape, positions):
    layers = keras.layers
    *taps, channels, out = kernel_shape
    rank = len(taps)
    if kind == "dense":
        inputs = keras.Input((channels,) if positions == 1 else (positions, channels))
        return keras.Model(inputs, layers.Dense(out)(inputs))
    inputs = keras.Input((*_spatial(positions, rank), channels))
    if kind == "depthwise":
        conv = {1: layers.DepthwiseConv1D, 2: layers.DepthwiseConv2D}[rank]
        return keras.Model(
            inputs, conv(tuple(taps), padding="same", depth_multiplier=out)(inputs)
        )
    conv = {1: layers.Conv1D, 2: layers.Conv2D, 3: layers.Conv3D}[rank]
    return keras.Model(inputs, conv(out, tuple(taps), padding="same")(inputs))


def _chain(length):
    """`length` ReLUs on a small tensor: the cost of an almost empty layer."""
    inputs = keras.Input((8,))
    x = inputs
    for _ in range(length):
        x = keras.layers.ReLU()(x)
    return keras.Model(inputs, x)
