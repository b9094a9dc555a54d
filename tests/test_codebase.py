"""Rules of the codebase that a reviewer would otherwise have to remember."""

import importlib
import pathlib
import re
import shutil
import subprocess
import sys
import warnings

import pytest

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


@pytest.mark.parametrize("name", sorted(keras_collapse._INTERNALS))
def test_old_top_level_names_still_resolve(name):
    # Earlier releases exported these at the top level: users' code may
    # still say `kc.<name>`; they left `__all__` only.
    assert name not in keras_collapse.__all__
    value = getattr(keras_collapse, name)
    home = importlib.import_module(keras_collapse._INTERNALS[name])
    assert getattr(home, name) is value


@pytest.mark.parametrize("old", sorted(keras_collapse._MOVED))
def test_moved_module_paths_still_import(old):
    new = importlib.import_module(keras_collapse._MOVED[old])
    # The alias only: an earlier import in this process would hide the warning.
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        module = importlib.import_module(old)
    assert module is new


# Where the last release's top-level names were defined, for the modules
# that moved: `from <old module> import <name>` in users' code still works.
OLD_HOMES = {
    "keras_collapse.cost_model": ["MacCostModel", "MeasuredCostModel"],
    "keras_collapse.inspection": ["Inspection", "inspect"],
    "keras_collapse.linearize": ["linearize"],
    "keras_collapse.prune": [
        "allocate_budget",
        "prunable_layers",
        "prune_by_count",
        "prune_by_fraction",
        "sparsity",
    ],
    "keras_collapse.recalibrate": ["recalibrate_batchnorm"],
    "keras_collapse.units": ["MergeUnit", "MergeUnits", "merge_units"],
    "keras_collapse.verify": ["VerificationError"],
}


@pytest.mark.parametrize("old", sorted(OLD_HOMES))
def test_old_modules_still_hold_their_names(old):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(old)
    for name in OLD_HOMES[old]:
        assert getattr(module, name) is getattr(keras_collapse, name), name
