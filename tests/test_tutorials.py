"""Every tutorial is executed, so none can rot."""

import pathlib
import runpy

import pytest

from tests.test_readme import optional_modules
from tests.testing import SLOW_OFF_TORCH
from tests.testing import require
from tests.testing import trains

TUTORIALS = sorted((pathlib.Path(__file__).parent.parent / "tutorials").glob("*.py"))


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=SLOW_OFF_TORCH if trains(p.read_text()) else [])
        for p in TUTORIALS
    ],
    ids=[p.stem for p in TUTORIALS],
)
def test_tutorial_runs(path, capsys, monkeypatch, one_torch_thread):
    for module in optional_modules(path.read_text()):
        require(module, f"tutorials/{path.name}")
    # The reduced size of tutorials that read it (small models, few epochs).
    monkeypatch.setenv("KC_TUTORIAL_SIZE", "small")
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip(), "a tutorial should print what it shows"


def test_tutorials_exist():
    assert TUTORIALS
