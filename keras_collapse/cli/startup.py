"""Loading Keras for a command: the backend checked first, TensorFlow's
start-up lines quieted, a failed import one line.

TensorFlow's C++ side prints its oneDNN line (twice: two of its libraries
log it) and absl's preamble while it is imported, before any log level
applies; Keras imports it on any backend, to serialize. The import of Keras
and Keras' first serialization run with stderr (the file descriptor, where
C++ writes) held in a temporary file; afterwards what was written is passed
on, less TensorFlow's lines below `TF_CPP_MIN_LOG_LEVEL` (the CLI's default:
2) and any of them a second time.
"""

import contextlib
import os
import re
import sys
import tempfile

from keras_collapse.cli.files import CLIError
from keras_collapse.cli.files import one_line

BACKENDS = ("tensorflow", "jax", "torch", "numpy", "openvino")
DEFAULT_TF_LOG_LEVEL = "2"
# absl / TensorFlow C++ log lines: severity letter, date, time, thread, file.
TF_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ \S+:\d+\] ")
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def import_library():
    """Imports keras and keras_collapse: `(keras, keras_collapse)`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_LOG_LEVEL)
    check_backend_variable()
    try:
        with filtered_stderr():
            import keras

            # Keras imports TensorFlow, when installed, at its first
            # serialization whatever the backend (saving, make_collapsible):
            # here, so that its start-up lines pass through the filter.
            keras.activations.serialize(keras.activations.relu)
    except Exception as e:
        backend = os.environ.get("KERAS_BACKEND", "from ~/.keras/keras.json")
        hint = ""
        if isinstance(e, ImportError):
            hint = f'; install the backend (pip install "keras-collapse[{backend}]")'
        raise CLIError(
            f"could not import Keras with backend {backend}: "
            f"{type(e).__name__}: {one_line(e)}{hint}"
        ) from e
    import keras_collapse

    return keras, keras_collapse


def check_backend_variable():
    backend = os.environ.get("KERAS_BACKEND")
    if backend is not None and backend.strip().lower() not in BACKENDS:
        raise CLIError(
            f"KERAS_BACKEND={backend!r} is not a Keras backend: set it to "
            "tensorflow, jax or torch (or unset it for the one in "
            "~/.keras/keras.json)"
        )


@contextlib.contextmanager
def filtered_stderr():
    """Holds what is written to the stderr file descriptor, then writes it
    back without TensorFlow's lines below its log level or repeats."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured (no descriptor)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            kept = quiet(held.read().decode("utf-8", "replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def quiet(text, level=None):
    """`text` without TensorFlow's log lines below `level` (default:
    `TF_CPP_MIN_LOG_LEVEL`), absl's preamble, and TensorFlow's lines seen
    before (the oneDNN line once at most)."""
    if level is None:
        try:
            level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
        except ValueError:
            level = 0
    kept, seen, dropped = [], set(), False
    for line in text.splitlines():
        match = TF_LINE.match(line)
        if match:
            body = line[match.end() :]
            dropped = SEVERITY[match.group(1)] < level or body in seen
            seen.add(body)
            if dropped:
                continue
        elif line.startswith(ABSL_PREAMBLE):
            continue
        elif dropped and line.startswith("To enable the following instructions"):
            continue  # the rest of a dropped line
        else:
            dropped = False
        kept.append(line)
    return "".join(line + "\n" for line in kept)
