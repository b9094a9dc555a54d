"""Rules of the codebase that a reviewer would otherwise have to remember."""

import pathlib
import re
import shutil
import subprocess

import keras_collapse
from tests.testing import require

ROOT = pathlib.Path(__file__).parent.parent
PACKAGE = ROOT / "keras_collapse"
BACKEND_IMPORT = re.compile(r"^\s*(from|import)\s+(tensorflow|jax|torch)\b", re.M)


def test_library_never_imports_a_backend():
    offenders = [
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if BACKEND_IMPORT.search(p.read_text())
    ]
    assert offenders == []


def test_private_keras_internals_stay_in_one_module():
    users = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "keras.src" in p.read_text()
    )
    assert users in ([], ["graph/keras_internals.py"])


def test_public_names_are_exported():
    for name in keras_collapse.__all__:
        assert hasattr(keras_collapse, name), name


def test_ruff_clean():
    venv_ruff = ROOT / ".venv/bin/ruff"
    ruff = shutil.which("ruff") or (str(venv_ruff) if venv_ruff.exists() else None)
    if ruff is None:  # skipped locally, a failure in CI
        ruff_module = require("ruff", "the lint check (the `test` extra has it)")
        ruff = ruff_module.find_ruff_bin()
    folders = [
        "keras_collapse",
        "tests",
        "scripts",
        "tutorials",
        "benchmarks",
        "examples",
    ]
    result = subprocess.run(
        [ruff, "check", *[f for f in folders if (ROOT / f).is_dir()]],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
