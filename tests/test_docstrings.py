"""Every `>>>` example in the library's docstrings runs and prints what it
shows (issue 22): one test per docstring, on JAX only (the examples show the
public API, whose results do not depend on the backend; one backend keeps
the suite's time down).

Each example starts from the same names a reader has after the usual
imports, not from its module's globals: `keras`, `np` (NumPy),
`keras_collapse` and `kc`. Anything else it uses it must import or build
itself. Output is compared with ELLIPSIS and NORMALIZE_WHITESPACE. An
example that cannot be made to run on its own becomes prose: an indented
code block without the `>>>` prompts.
"""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest

import keras_collapse

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PREFIX = "keras_collapse."


def module_names():
    """Every module of the package, found on disk (the aliases of moved
    modules are not on disk, so they are not visited twice)."""
    names = ["keras_collapse"]
    for info in pkgutil.walk_packages(keras_collapse.__path__, PREFIX):
        if info.name != "keras_collapse.__main__":  # the CLI entry: no docs
            names.append(info.name)
    return sorted(names)


def collect():
    """(docstring tests, import failures): the tests in finder order, each
    with its examples; the modules that failed to import, with the error."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests, failures = [], []
    for name in module_names():
        try:
            module = importlib.import_module(name)
        except Exception as error:  # reported by test_every_module_imports
            failures.append((name, f"{type(error).__name__}: {error}"))
            continue
        # `find` keeps to objects defined in `module`, so a re-exported
        # function is tested once, under the module that defines it.
        tests += [test for test in finder.find(module) if test.examples]
    return tests, failures


TESTS, IMPORT_FAILURES = collect()


def short_id(test):
    name = test.name
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


def reader_globals():
    import keras_collapse as kc

    return {
        "__name__": "__doctest__",
        "keras": keras,
        "np": np,
        "keras_collapse": kc,
        "kc": kc,
    }


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="docstring examples run on one backend (JAX): they show the "
    "backend-independent public API",
)
@pytest.mark.parametrize("test", TESTS, ids=short_id)
def test_docstring_examples(test):
    test.globs = reader_globals()
    output = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS, verbose=False)
    try:
        result = runner.run(test, out=output.append, clear_globs=True)
    finally:
        keras.backend.clear_session(free_memory=False)
    if result.failed:
        where = f"{test.filename}:{(test.lineno or 0) + 1}"
        pytest.fail(
            f"{result.failed} of {result.attempted} examples failed in "
            f"{test.name} ({where}):\n" + "".join(output),
            pytrace=False,
        )


def test_examples_are_collected():
    # Without this, a broken walk would make the test above run nothing.
    examples = sum(len(test.examples) for test in TESTS)
    assert len(TESTS) >= 10 and examples >= 30, (
        f"only {len(TESTS)} docstrings with {examples} `>>>` examples found "
        "in keras_collapse: the collector is broken"
    )


def test_every_module_imports():
    # A module that fails to import would hide its examples.
    assert not IMPORT_FAILURES, "\n".join(f"{n}: {e}" for n, e in IMPORT_FAILURES)
