"""The `keras-collapse` argument parser (standard library only: `--help` and
usage errors answer before Keras is imported)."""

import argparse
import math
import textwrap

from keras_collapse.cli.collapse_command import collapse_command
from keras_collapse.cli.commands import inspect_command
from keras_collapse.cli.commands import surgery_command

PROG = "keras-collapse"
DEBUG_VARIABLE = "KERAS_COLLAPSE_DEBUG"
# keras_collapse.surgery.units.OBJECTIVES (a test keeps them equal): not imported,
# which would import Keras.
OBJECTIVES = ("activations", "depth", "latency")

SAFE_MODE_HELP = (
    "load the model with safe_mode=False. By default models load in Keras' "
    "safe mode, which refuses a file holding Python code that loading would "
    "run (the function of a Lambda layer): such a model fails to load until "
    "you pass --unsafe. Use it only for files you trust."
)

EXIT_CODES = """\
exit codes:
  0 success; 1 error (file not found, not a .keras file, refused by safe
  mode, data that do not fit, no compiled loss, surgery failed or not
  verified, ...); 2 bad usage; 130 interrupted."""

EPILOG = f"""\
safe mode:
  Models load with keras.saving.load_model(path, safe_mode=True,
  compile=False). Safe mode refuses models that carry Python code to run
  when loading (Lambda layers): pass --unsafe for files you trust.

{EXIT_CODES}

environment:
  KERAS_BACKEND           tensorflow, jax or torch, as for Keras
  TF_CPP_MIN_LOG_LEVEL    TensorFlow's C++ log level (default here: 2,
                          which also drops its oneDNN start-up line)
  TF_ENABLE_ONEDNN_OPTS   0 turns TensorFlow's oneDNN kernels off
  {DEBUG_VARIABLE}=1  re-raise errors with their Python traceback

"{PROG} COMMAND --help" describes each command; docs/cli.md has the rest."""

COMMAND_EPILOG = f"""\
{EXIT_CODES}

"{PROG} --help" says more about safe mode and the environment."""


class _Formatter(argparse.HelpFormatter):
    """Wraps prose paragraphs; keeps paragraphs with indented lines as they
    are (the epilog's sections)."""

    def _fill_text(self, text, width, indent):
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if any(line.startswith(" ") for line in paragraph.splitlines()):
                paragraphs.append(
                    "\n".join(indent + line for line in paragraph.splitlines())
                )
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(paragraphs)


# ------------------------------------------------------------------ parsing
def build_parser():
    """The argparse parser of `keras-collapse` (commands set `func`)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Inspect saved Keras 3 models and make them shallower: "
            "keras_collapse's statistics, TLC BatchNorm analysis, what the "
            "surgery could save, the surgery, and the one-call collapse."
        ),
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", title="commands", required=True
    )
    loading = argparse.ArgumentParser(add_help=False)
    loading.add_argument("--unsafe", action="store_true", help=SAFE_MODE_HELP)
    loading.add_argument(
        "--input-shape",
        metavar="SHAPE",
        type=_shape,
        action="append",
        help=(
            "input shape without the batch axis, e.g. 224,224,3, for axes the "
            "model leaves unknown (otherwise assumed 32); repeat it once per "
            "input for several inputs"
        ),
    )
    _add_inspect(commands, loading)
    _add_surgery(commands, loading)
    _add_collapse(commands, loading)
    return parser


def _command(commands, name, parents, help, description):
    return commands.add_parser(
        name,
        parents=parents,
        help=help,
        description=description,
        epilog=COMMAND_EPILOG,
        formatter_class=_Formatter,
    )


def _no_exact(parser):
    parser.add_argument(
        "--no-exact",
        action="store_true",
        help='also allow merges of "same"-padded k x k convs, exact only away '
        "from the image border; the measured deviation is reported",
    )


def _add_inspect(commands, loading):
    inspect = _command(
        commands,
        "inspect",
        [loading],
        "print depth, params, MACs, what the surgery could save, BN analysis",
        "Print a saved model's statistics (real depth, nonlinear activations, "
        "parameters, MACs: keras_collapse.model_stats), its collapsible "
        "activations with their alpha and linear state, the TLC analysis of "
        "the activations BatchNormalization layers feed "
        "(keras_collapse.analyze_batchnorm), and the potential: what the "
        "surgery would save if every merge unit were linearized (depth, "
        "params, MACs and MAC-priced latency, each as a share of the "
        "BN-folded model), and which activations can never pay, why, and "
        "what would help (keras_collapse.inspect). A model without "
        "collapsible activations is analysed as keras_collapse."
        "make_collapsible would convert it (ReLU, GELU, ... at alpha 0, same "
        "outputs). The file is not modified.",
    )
    inspect.add_argument("model", metavar="MODEL.keras", help="the saved model")
    inspect.add_argument(
        "--json",
        metavar="FILE",
        help="also write everything printed as JSON to FILE ('-': JSON on "
        "stdout instead of the text)",
    )
    inspect.add_argument(
        "--confidence",
        type=_probability,
        default=0.95,
        metavar="P",
        help="probability at which the BN analysis calls a channel ON or OFF "
        "(between 0.5 and 1; default 0.95)",
    )
    _no_exact(inspect)
    inspect.add_argument(
        "--no-potential",
        action="store_true",
        help="skip the potential (dry runs of the surgery: seconds on a large model)",
    )
    inspect.set_defaults(func=inspect_command)


def _add_surgery(commands, loading):
    surgery = _command(
        commands,
        "surgery",
        [loading],
        "make a saved model shallower and save the result",
        "Run keras_collapse.surgery on a saved model and save the result: "
        "identity layers and linear collapsible activations removed, "
        "BatchNorm folded, zero channels cut, linear runs merged where that "
        "costs fewer MACs. The result is checked against the input on random "
        "inputs; then the report (before/after depth, activations, params, "
        "MACs; what was done and what not, and why) is printed. Nothing is "
        "written if the surgery or the check fails.",
    )
    surgery.add_argument("input", metavar="IN.keras", help="the saved model")
    _output(surgery)
    _no_exact(surgery)
    surgery.add_argument(
        "--tolerance",
        type=_positive_float,
        default=1e-5,
        metavar="T",
        help="largest allowed relative deviation max|a - b| / max|a| between "
        "the input model and the result on random inputs (default 1e-5)",
    )
    surgery.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the check on random inputs (no deviation is measured)",
    )
    _report(surgery)
    surgery.set_defaults(func=surgery_command)


def _output(parser):
    parser.add_argument(
        "output",
        metavar="OUT.keras",
        help="where to save the result (must end in .keras; overwritten)",
    )


def _report(parser):
    parser.add_argument(
        "--report",
        metavar="FILE.json",
        help="also write the report as JSON to this file",
    )


def _add_collapse(commands, loading):
    unsafe = argparse.ArgumentParser(add_help=False)
    unsafe.add_argument("--unsafe", action="store_true", help=SAFE_MODE_HELP)
    collapse = _command(
        commands,
        "collapse",
        [unsafe],
        "fine-tune a compiled saved model to a target, collapse it, save it",
        "Run keras_collapse.collapse on a saved, compiled model: convert it, "
        "fine-tune it with its own loss and optimizer while the joint method "
        "learns which activations to make linear (the target), re-estimate "
        "BatchNorm, run the verified surgery, and save the plain Keras result. "
        "The training data are the arrays x and y of an .npz file "
        "(numpy.savez('train.npz', x=x, y=y)). The report (activations "
        "linearized, depth, params, MACs, validation metrics and latency, "
        "before and after) is printed. Nothing is written if a check fails.",
    )
    collapse.add_argument(
        "input", metavar="IN.keras", help="the saved model, saved compiled"
    )
    _output(collapse)
    collapse.add_argument(
        "--data",
        metavar="TRAIN.npz",
        required=True,
        help="the training data: an .npz file with arrays x and y",
    )
    collapse.add_argument(
        "--validation",
        metavar="VAL.npz",
        help="validation data (arrays x and y) for the epoch lines and the "
        "report's before / after metrics",
    )
    collapse.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="activations",
        help="what --target is a fraction of: the candidate activations "
        "(default), the BN-folded model's real depth, or its MAC-priced "
        "latency ('inspect' prints the most depth and latency can reach)",
    )
    collapse.add_argument(
        "--target",
        type=_fraction,
        default=0.5,
        metavar="F",
        help="the fraction to remove, in (0, 1] (default 0.5)",
    )
    collapse.add_argument(
        "--epochs",
        type=_positive_int,
        default=4,
        metavar="N",
        help="fine-tuning epochs (default 4)",
    )
    collapse.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help="fit's batch size (default: Keras' 32)",
    )
    _no_exact(collapse)
    collapse.add_argument(
        "--no-latency",
        action="store_true",
        help="skip timing the input model and the result",
    )
    collapse.add_argument(
        "--quiet",
        action="store_true",
        help="print the report alone (no stage or epoch lines)",
    )
    _report(collapse)
    collapse.set_defaults(func=collapse_command)


def _version():
    from keras_collapse.version import __version__

    try:
        from importlib.metadata import version

        keras = f" (keras {version('keras')})"
    except Exception:  # keras not installed as a distribution: say nothing
        keras = ""
    return f"{PROG} {__version__}{keras}"


def _shape(text):
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, e.g. 224,224,3; "
            f"got {text!r}"
        )
    return dims


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"expected a positive number such as 1e-5; got {text!r}"
        )
    return value


def _probability(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.5 < value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a number between 0.5 and 1 (exclusive); got {text!r}"
        )
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"expected a fraction in (0, 1], such as 0.5; got {text!r}"
        )
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number; got {text!r}"
        )
    return value
