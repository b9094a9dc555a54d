"""`main`: parse, run the command, turn every failure into one line."""

import os
import sys

from keras_collapse.cli.files import CLIError
from keras_collapse.cli.files import one_line
from keras_collapse.cli.parser import DEBUG_VARIABLE
from keras_collapse.cli.parser import PROG
from keras_collapse.cli.parser import build_parser
from keras_collapse.cli.startup import DEFAULT_TF_LOG_LEVEL

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # what argparse exits with on a usage error
EXIT_INTERRUPTED = 130


def main(argv=None):
    """Runs `keras-collapse` with `argv` (default: `sys.argv[1:]`).

    Returns:
        int, the exit code: 0 on success, 1 on an error (reported as one
        line on stderr). Usage errors, `--help` and `--version` exit through
        argparse's `SystemExit` (2, 0, 0), before Keras is imported.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_LOG_LEVEL)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or EXIT_OK
    except KeyboardInterrupt:
        if _debugging():
            raise
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `keras-collapse inspect m.keras | head`: the reader left; stay quiet.
        _silence_stdout()
        return EXIT_ERROR
    except Exception as e:
        if _debugging():
            raise
        if isinstance(e, CLIError):
            _error(str(e))
        else:
            _error(
                f"unexpected {type(e).__name__}: {e} (set {DEBUG_VARIABLE}=1 "
                "to see the traceback)"
            )
        return EXIT_ERROR


def _debugging():
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


def _error(message):
    sys.stdout.flush()
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)


def _silence_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
