"""Keeps Keras' files out of the user's home; the backend comes from the caller.

The suite runs once per backend (`python3 scripts/dev.py test`), each run in
its own process with KERAS_BACKEND set before keras is imported.
"""

import os
import tempfile

if "KERAS_HOME" not in os.environ:
    os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="keras_collapse_home_")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.environ["KERAS_HOME"], "mpl"))
os.environ.setdefault("MPLBACKEND", "Agg")

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", help="run tests marked large")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="large test: pass --run-large to run it")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
    # free_memory=False: a gc.collect() per test would cost ~0.3 s each.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def one_torch_thread():
    """On torch, one compute thread while a test trains: the suite shares the
    CPUs with other processes, and torch's two OpenMP threads waiting for
    each other made small fits more than 10x slower (the transformer
    tutorial's small size had not finished after 5 minutes instead of 30 s,
    on 2 cores at load 6)."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
