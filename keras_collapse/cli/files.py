"""What the command line reads and writes: the checks of model, data and
output paths (standard library only, before Keras loads), loading, JSON."""

import json
import math
import warnings
import zipfile
from pathlib import Path


class CLIError(Exception):
    """A failure to report as one line on stderr, with exit code 1."""


def one_line(message):
    return " ".join(str(message).split())


# ------------------------------------------------------------------ inputs
def model_path(text):
    """Checks that `text` names a readable `.keras` archive; returns a Path."""
    path = Path(text)
    if not path.exists():
        raise CLIError(f"{text}: no such file; give the path of a saved .keras model")
    if path.is_dir():
        raise CLIError(f"{text} is a directory; give the path of a .keras file")
    if path.suffix != ".keras":
        hint = ""
        if path.suffix.lower() in (".h5", ".hdf5"):
            hint = (
                "; convert a legacy H5 file in Python with "
                "keras.saving.load_model(old).save('model.keras')"
            )
        raise CLIError(
            f"{text} is not a .keras file: only Keras 3's native .keras format "
            f"can be read{hint}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile:
        raise CLIError(
            f"{text} is not a valid .keras file (not a zip archive); save "
            "models with model.save('name.keras')"
        ) from None
    except OSError as e:
        raise CLIError(f"cannot read {text}: {e.strerror or e}") from e
    if "config.json" not in names:
        raise CLIError(
            f"{text} is not a valid .keras file (no config.json in the "
            "archive); save models with model.save('name.keras')"
        )
    return path


def data_path(text, option):
    """Checks that `text` (given to `option`) names an `.npz` file."""
    path = Path(text)
    if not path.exists():
        raise CLIError(
            f"{option} {text}: no such file; give an .npz file with arrays x "
            "and y (numpy.savez('train.npz', x=x, y=y))"
        )
    if path.is_dir():
        raise CLIError(f"{option} {text} is a directory; give an .npz file")
    if path.suffix != ".npz" or not zipfile.is_zipfile(path):
        raise CLIError(
            f"{option} {text} is not an .npz file; write the arrays with "
            "numpy.savez('train.npz', x=x, y=y)"
        )
    return path


def read_arrays(path, option):
    """Arrays `x` and `y` of the `.npz` file `path`, with as many rows."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            names = sorted(archive.files)
            if not {"x", "y"} <= set(names):
                raise CLIError(
                    f"{option} {path} holds arrays {names}: expected x (the "
                    "inputs) and y (the targets), e.g. numpy.savez("
                    "'train.npz', x=x, y=y)"
                )
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as e:  # corrupt, or object arrays
        raise CLIError(f"cannot read {option} {path}: {one_line(e)}") from e
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise CLIError(
            f"{option} {path}: x and y must have as many rows; x has shape "
            f"{x.shape} and y has shape {y.shape}"
        )
    if len(x) == 0:
        raise CLIError(f"{option} {path}: x and y have no rows")
    return x, y


# ----------------------------------------------------------------- outputs
def output_model_path(text, *inputs):
    """Checks where a model may be saved; returns a Path."""
    if not text.endswith(".keras"):
        raise CLIError(
            f"the output path {text} must end in .keras (the format Keras "
            "saves); e.g. small.keras"
        )
    return output_file(text, *inputs)


def output_file(text, *inputs):
    """Checks that a file can be written at `text` without replacing one of
    `inputs` or a directory; returns a Path."""
    path = Path(text)
    if path.is_dir():
        raise CLIError(f"{text} is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise CLIError(f"cannot write {text}: directory {parent} does not exist")
    for other in inputs:
        if other is not None and path.resolve() == Path(other).resolve():
            raise CLIError(f"{text} is also the input {other}; write to another file")
    return path


def write_json(path, data):
    text = json.dumps(json_ready(data), indent=2, allow_nan=False)
    try:
        Path(path).write_text(text + "\n", encoding="utf-8")
    except OSError as e:
        raise CLIError(f"could not write {path}: {e.strerror or e}") from e


def json_ready(value):
    """`value` with NumPy values as Python ones, tuples as lists, keys as
    str, and NaN / infinities as None, so that it is strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_ready(value.tolist())  # NumPy arrays and scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------- loading
def load_model(keras, path, unsafe, compile=False):
    """`keras.saving.load_model` in safe mode unless `unsafe`; uncompiled
    unless `compile` (inspect and surgery need no optimizer or loss)."""
    try:
        with warnings.catch_warnings():
            # collapse reuses the optimizer's configuration, not its state.
            warnings.filterwarnings(
                "ignore", message="Skipping variable loading for optimizer"
            )
            return keras.saving.load_model(
                str(path), compile=compile, safe_mode=not unsafe
            )
    except Exception as e:
        if not unsafe and "safe_mode" in str(e):
            raise CLIError(
                f"{path} was refused in safe mode: it holds Python code that "
                "loading would run (e.g. a Lambda layer's function). If you "
                "trust the file, rerun with --unsafe"
            ) from e
        raise CLIError(f"could not load {path}: {type(e).__name__}: {e}") from e


def input_shape(shapes):
    """The `--input-shape` values as `model_stats` / `surgery` take them."""
    if not shapes:
        return None
    return shapes[0] if len(shapes) == 1 else list(shapes)
