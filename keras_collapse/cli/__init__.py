"""The `keras-collapse` command line: inspect a saved model, run the surgery,
collapse a compiled model to a target.

    keras-collapse inspect model.keras [--json info.json]
    keras-collapse surgery model.keras small.keras [--report report.json]
    keras-collapse collapse model.keras small.keras --data train.npz
    python -m keras_collapse ...            # the same commands

Arguments are parsed and paths checked with the standard library alone (the
package `__init__` is lazy), so `--help` and usage errors answer before Keras
or a backend is imported. A command imports Keras (`startup`) after giving
`TF_CPP_MIN_LOG_LEVEL` a default of 2 and checking `KERAS_BACKEND`. Every
failure is one line on stderr, `keras-collapse: error: ...`, with exit code
1 (2 for usage errors, from argparse); `KERAS_COLLAPSE_DEBUG=1` re-raises
instead, with the traceback. The documentation is `docs/cli.md`.

Modules: `parser` (the options), `app` (`main`), `commands` (inspect,
surgery), `collapse_command`, `files` (path checks, `.npz`, JSON),
`startup` (importing Keras quietly).
"""

from keras_collapse.cli.app import EXIT_ERROR
from keras_collapse.cli.app import EXIT_INTERRUPTED
from keras_collapse.cli.app import EXIT_OK
from keras_collapse.cli.app import EXIT_USAGE
from keras_collapse.cli.app import main
from keras_collapse.cli.files import CLIError
from keras_collapse.cli.files import json_ready
from keras_collapse.cli.parser import DEBUG_VARIABLE
from keras_collapse.cli.parser import OBJECTIVES
from keras_collapse.cli.parser import PROG
from keras_collapse.cli.parser import build_parser

__all__ = [
    "CLIError",
    "DEBUG_VARIABLE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "OBJECTIVES",
    "PROG",
    "build_parser",
    "json_ready",
    "main",
]
