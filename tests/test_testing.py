"""`require`, the suite's one way to use an optional test dependency: skipped
locally when missing, a failure in CI (`CI=true`)."""

import json

import pytest

from tests.testing import require

pytest_plugins = ["pytester"]

MISSING = "keras_collapse_no_such_module"


def test_returns_the_module(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert require("json") is json


def test_missing_module_skips_locally(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING) as info:
        require(MISSING, "a test")
    assert info.value.allow_module_level
    assert "scripts/dev.py setup" in str(info.value)


@pytest.mark.parametrize("value", ["false", "1", ""])
def test_only_ci_true_fails(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        require(MISSING)


def test_missing_module_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as info:
        require(MISSING, "a test")
    message = str(info.value)
    assert MISSING in message and "needed for a test" in message
    assert "CI=true" in message
    assert "scripts/dev.py setup" in message and "[test]" in message


@pytest.mark.parametrize("ci", [None, "true"])
def test_at_module_level(pytester, monkeypatch, ci):
    """`keras_hub = require("keras_hub")` at the top of a test file."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(
        f"""
        from tests.testing import require

        module = require({MISSING!r})

        def test_never_runs():
            raise AssertionError("collected despite the missing module")
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    if ci is None:
        result.assert_outcomes(skipped=1)
    else:
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([f"*{MISSING}*CI=true*"])
