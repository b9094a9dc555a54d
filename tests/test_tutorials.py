"""Every tutorial is executed, so none can rot."""

import pathlib
import runpy

import keras
import pytest

from tests.test_readme import optional_modules
from tests.testing import require

TUTORIALS = sorted((pathlib.Path(__file__).parent.parent / "tutorials").glob("*.py"))


@pytest.fixture
def one_torch_thread():
    """On torch, one compute thread while a tutorial trains: the suite shares
    the CPUs with other processes, and torch's two OpenMP threads waiting
    for each other made the transformer tutorial more than 10x slower (its
    small size had not finished after 5 minutes instead of 30 s, on 2 cores
    at load 6)."""
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


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, capsys, monkeypatch, one_torch_thread):
    for module in optional_modules(path.read_text()):
        require(module, f"tutorials/{path.name}")
    # The reduced size of tutorials that read it (small models, few epochs).
    monkeypatch.setenv("KC_TUTORIAL_SIZE", "small")
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip(), "a tutorial should print what it shows"


def test_tutorials_exist():
    assert TUTORIALS
