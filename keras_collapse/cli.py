"""The `keras-collapse` command line: inspect a saved model, run the surgery.

    keras-collapse inspect model.keras [--json info.json]
    keras-collapse surgery model.keras small.keras [--report report.json]
    python -m keras_collapse ...            # the same commands

Arguments are parsed and paths checked with the standard library alone;
keras and the library's functions are imported inside the commands, after
`TF_CPP_MIN_LOG_LEVEL` has been given a default of 2 (TensorFlow's C++ INFO
and WARNING lines off). Every failure is one line on stderr,
`keras-collapse: error: ...`, with exit code 1 (2 for usage errors, from
argparse); `KERAS_COLLAPSE_DEBUG=1` re-raises instead, with the traceback.
The documentation is `docs/cli.md`.

(The package's `__init__` imports keras eagerly, so importing this module
already imports keras: `--help` waits for it, and on the TensorFlow backend
TensorFlow has started before the log-level default can apply.)
"""

import argparse
import json
import math
import os
import sys
import textwrap
import zipfile
from pathlib import Path

PROG = "keras-collapse"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # what argparse exits with on a usage error
EXIT_INTERRUPTED = 130
DEBUG_VARIABLE = "KERAS_COLLAPSE_DEBUG"

SAFE_MODE_HELP = (
    "load the model with safe_mode=False. By default models load in Keras' "
    "safe mode, which refuses a file holding Python code that loading would "
    "run (the function of a Lambda layer): such a model fails to load until "
    "you pass --unsafe. Use it only for files you trust."
)

EXIT_CODES = """\
exit codes:
  0 success; 1 error (file not found, not a .keras file, refused by safe
  mode, surgery failed or not verified, ...); 2 bad usage; 130 interrupted."""

EPILOG = f"""\
safe mode:
  Models load with keras.saving.load_model(path, safe_mode=True,
  compile=False). Safe mode refuses models that carry Python code to run
  when loading (Lambda layers): pass --unsafe for files you trust.

{EXIT_CODES}

environment:
  KERAS_BACKEND           tensorflow, jax or torch, as for Keras
  TF_CPP_MIN_LOG_LEVEL    TensorFlow's C++ log level (default here: 2)
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


class CLIError(Exception):
    """A failure to report as one line on stderr, with exit code 1."""


# ------------------------------------------------------------------ parsing
def build_parser():
    """The argparse parser of `keras-collapse` (commands set `func`)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Inspect saved Keras 3 models and make them shallower: "
            "keras_collapse's statistics, TLC BatchNorm analysis and surgery."
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

    inspect = commands.add_parser(
        "inspect",
        parents=[loading],
        help="print depth, params, MACs, collapsible activations, BN analysis",
        description=(
            "Print a saved model's statistics (real depth, nonlinear "
            "activations, parameters, MACs: keras_collapse.model_stats), its "
            "collapsible activations with their alpha and linear state, and, "
            "when it has BatchNormalization layers, the TLC analysis of the "
            "activations they feed (keras_collapse.analyze_batchnorm). A model "
            "without collapsible activations is analysed as "
            "keras_collapse.make_collapsible would convert it (ReLU, GELU, ... "
            "at alpha 0, same outputs). The file is not modified."
        ),
        epilog=COMMAND_EPILOG,
        formatter_class=_Formatter,
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
    inspect.set_defaults(func=inspect_command)

    surgery = commands.add_parser(
        "surgery",
        parents=[loading],
        help="make a saved model shallower and save the result",
        description=(
            "Run keras_collapse.surgery on a saved model and save the result: "
            "identity layers and linear collapsible activations removed, "
            "BatchNorm folded, zero channels cut, linear runs merged where "
            "that costs fewer MACs. The result is checked against the input "
            "on random inputs; then the report (before/after depth, "
            "activations, params, MACs; what was done and what not, and why) "
            "is printed. Nothing is written if the surgery or the check fails."
        ),
        epilog=COMMAND_EPILOG,
        formatter_class=_Formatter,
    )
    surgery.add_argument("input", metavar="IN.keras", help="the saved model")
    surgery.add_argument(
        "output",
        metavar="OUT.keras",
        help="where to save the result (must end in .keras; overwritten)",
    )
    surgery.add_argument(
        "--no-exact",
        action="store_true",
        help='also allow merges of "same"-padded k x k convs, exact only away '
        "from the image border; the measured deviation is reported",
    )
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
    surgery.add_argument(
        "--report",
        metavar="FILE.json",
        help="also write the report as JSON to this file",
    )
    surgery.set_defaults(func=surgery_command)
    return parser


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


# --------------------------------------------------------------------- main
def main(argv=None):
    """Runs `keras-collapse` with `argv` (default: `sys.argv[1:]`).

    Returns:
        int, the exit code: 0 on success, 1 on an error (reported as one
        line on stderr). Usage errors, `--help` and `--version` exit through
        argparse's `SystemExit` (2, 0, 0).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _one_line(message):
    return " ".join(str(message).split())


def _silence_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ------------------------------------------------------------------ inspect
def inspect_command(args):
    path = model_path(args.model)
    json_path = None if args.json in (None, "-") else output_file(args.json, path)
    keras, kc = _import_library()
    model = load_model(keras, path, args.unsafe)
    info, analysis = describe(keras, kc, model, path, args)
    if args.json == "-":
        print(json.dumps(json_ready(info), indent=2, allow_nan=False))
        return EXIT_OK
    print(format_inspection(info, analysis))
    if json_path is not None:
        write_json(json_path, info)
        print(f"\nWrote {json_path}")
    return EXIT_OK


def describe(keras, kc, model, path, args):
    """Everything `inspect` prints, as a JSON-ready dict, and the
    `BatchNormAnalysis` (or None) to print as a table."""
    input_shape = _input_shape(args.input_shape)
    try:
        stats = kc.model_stats(model, input_shape=input_shape)
    except ValueError as e:
        raise CLIError(f"cannot measure {path}: {e}") from e
    from keras_collapse import collapsible

    layers = kc.collapsible_layers(model)
    batchnorms = [
        layer
        for layer in collapsible.model_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    analysis, analysed, notes = _batchnorm_analysis(
        kc, model, layers, batchnorms, args.confidence
    )
    info = {
        "file": str(path),
        "model": model.name,
        "class": type(model).__name__,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "inputs": _shapes(getattr(model, "inputs", None)),
        "outputs": _shapes(getattr(model, "outputs", None)),
        "stats": stats.as_dict(),
        "collapsible": [_collapsible_info(layer) for layer in layers],
        "batchnorm_layers": len(batchnorms),
        "batchnorm_analysis": None if analysis is None else analysis.as_dict(),
        "batchnorm_analysis_of": analysed,
        "notes": notes,
    }
    return info, analysis


def _batchnorm_analysis(kc, model, layers, batchnorms, confidence):
    """Returns `(analysis or None, what was analysed or None, notes)`."""
    if not batchnorms:
        return None, None, ["No BatchNormalization layers: no BN analysis."]
    if layers:
        return kc.analyze_batchnorm(model, confidence=confidence), "model", []
    try:
        converted = kc.make_collapsible(model)
    except ValueError as e:
        note = f"No collapsible activations, and make_collapsible failed: {e}"
        return None, None, [_one_line(note)]
    if not kc.collapsible_layers(converted):
        return None, None, ["No activations for the BN analysis to read."]
    note = (
        "The model has no collapsible activations: the BN analysis reads its "
        "activations as keras_collapse.make_collapsible(model) converts them "
        "(alpha 0, same outputs)."
    )
    analysis = kc.analyze_batchnorm(converted, confidence=confidence)
    return analysis, "make_collapsible(model)", [note]


def _collapsible_info(layer):
    alpha = layer.alpha_numpy()
    return {
        "name": layer.name,
        "activation": layer.activation,
        "alpha_mean": float(alpha.mean()),
        "alpha_min": float(alpha.min()),
        "alpha_max": float(alpha.max()),
        "alpha_size": int(alpha.size),
        "linear": layer.is_linear,
        "locked": layer.is_locked,
    }


def _shapes(tensors):
    if not tensors:
        return []
    return [list(t.shape) for t in tensors]


def format_inspection(info, analysis):
    """The text `inspect` prints."""
    from keras_collapse.report.table import _STAT_ROWS
    from keras_collapse.report.table import _table

    stats = info["stats"]
    inputs = ", ".join(_format_shape(s) for s in info["inputs"]) or "?"
    outputs = ", ".join(_format_shape(s) for s in info["outputs"]) or "?"
    parts = [
        f"Model '{info['model']}' ({info['class']}) from {info['file']}\n"
        f"Inputs: {inputs}  Outputs: {outputs}  (keras {info['keras_version']}, "
        f"backend {info['backend']})",
        "\n".join(
            [
                _table(
                    "Model statistics",
                    ("", "Value"),
                    [(label, f"{stats[field]:,}") for label, field in _STAT_ROWS],
                    "<>",
                ),
                *(f"Note: {n}" for n in stats["notes"]),
            ]
        ),
    ]
    layers = info["collapsible"]
    if layers:
        rows = [
            (
                layer["name"],
                layer["activation"],
                _format_alpha(layer),
                "yes" if layer["linear"] else "no",
                "yes" if layer["locked"] else "no",
            )
            for layer in layers
        ]
        linear = sum(layer["linear"] for layer in layers)
        parts.append(
            _table(
                f"Collapsible activations ({len(layers)}, {linear} linear)",
                ("Layer", "Activation", "Alpha", "Linear", "Locked"),
                rows,
                "<<><<",
            )
        )
    else:
        parts.append(
            "Collapsible activations: none (keras_collapse.make_collapsible "
            "converts ReLU, GELU, ... activations into them)."
        )
    if analysis is not None:
        parts.append(str(analysis))
    if info["notes"]:
        parts.append("\n".join(info["notes"]))
    return "\n\n".join(parts)


def _format_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _format_alpha(layer):
    if layer["alpha_size"] == 1:
        return f"{layer['alpha_mean']:.4g}"
    return (
        f"mean {layer['alpha_mean']:.4g} ({layer['alpha_min']:.4g} to "
        f"{layer['alpha_max']:.4g}, {layer['alpha_size']} values)"
    )


# ------------------------------------------------------------------ surgery
def surgery_command(args):
    source = model_path(args.input)
    target = output_model_path(args.output, source)
    report_path = None
    if args.report is not None:
        report_path = output_file(args.report, source, target)
    keras, kc = _import_library()
    model = load_model(keras, source, args.unsafe)
    try:
        small, report = kc.surgery(
            model,
            exact=not args.no_exact,
            verify=not args.no_verify,
            tolerance=args.tolerance,
            input_shape=_input_shape(args.input_shape),
            return_report=True,
        )
    except kc.VerificationError as e:
        raise CLIError(
            f"the surgery result does not compute what {source} computes: {e} "
            f"Nothing was written. If that is float32 round-off, rerun with a "
            "larger --tolerance; otherwise please report it."
        ) from e
    except ValueError as e:
        raise CLIError(f"surgery failed on {source}: {e}") from e
    try:
        small.save(str(target))
    except Exception as e:
        raise CLIError(f"could not save the result to {target}: {e}") from e
    if report_path is not None:
        write_json(report_path, surgery_json(keras, report, source, target))
    print(report)
    print(f"\nSaved {target}")
    if report_path is not None:
        print(f"Wrote {report_path}")
    return EXIT_OK


def surgery_json(keras, report, source, target):
    """`SurgeryReport.as_dict()` with where it came from and went to."""
    return {
        "input": str(source),
        "output": str(target),
        "backend": keras.backend.backend(),
        **report.as_dict(),
    }


# -------------------------------------------------------------- files, I/O
def model_path(text):
    """Checks that `text` names a readable `.keras` archive; returns a Path."""
    path = Path(text)
    if not path.exists():
        raise CLIError(f"{text}: no such file; give the path of a saved .keras model")
    if path.is_dir():
        raise CLIError(f"{text} is a directory; give the path of a .keras file")
    if path.suffix != ".keras":
        hint = ""
        if path.suffix.lower() in (".h5", ".hdf5"):
            hint = (
                "; convert a legacy H5 file in Python with "
                "keras.saving.load_model(old).save('model.keras')"
            )
        raise CLIError(
            f"{text} is not a .keras file: only Keras 3's native .keras format "
            f"can be read{hint}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile:
        raise CLIError(
            f"{text} is not a valid .keras file (not a zip archive); save "
            "models with model.save('name.keras')"
        ) from None
    except OSError as e:
        raise CLIError(f"cannot read {text}: {e.strerror or e}") from e
    if "config.json" not in names:
        raise CLIError(
            f"{text} is not a valid .keras file (no config.json in the "
            "archive); save models with model.save('name.keras')"
        )
    return path


def output_model_path(text, source):
    """Checks where a model may be saved; returns a Path."""
    if not text.endswith(".keras"):
        raise CLIError(
            f"the output path {text} must end in .keras (the format Keras "
            "saves); e.g. small.keras"
        )
    return output_file(text, source)


def output_file(text, *inputs):
    """Checks that a file can be written at `text` without replacing one of
    `inputs` or a directory; returns a Path."""
    path = Path(text)
    if path.is_dir():
        raise CLIError(f"{text} is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise CLIError(f"cannot write {text}: directory {parent} does not exist")
    for other in inputs:
        if path.resolve() == Path(other).resolve():
            raise CLIError(f"{text} is also the input {other}; write to another file")
    return path


def write_json(path, data):
    text = json.dumps(json_ready(data), indent=2, allow_nan=False)
    try:
        Path(path).write_text(text + "\n", encoding="utf-8")
    except OSError as e:
        raise CLIError(f"could not write {path}: {e.strerror or e}") from e


def json_ready(value):
    """`value` with NumPy values as Python ones, tuples as lists, keys as
    str, and NaN / infinities as None, so that it is strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_ready(value.tolist())  # NumPy arrays and scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _import_library():
    """Imports keras and keras_collapse (TensorFlow's C++ logs quieted)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import keras_collapse

    return keras, keras_collapse


def load_model(keras, path, unsafe):
    """`keras.saving.load_model` in safe mode unless `unsafe`, uncompiled
    (neither inspect nor surgery needs the optimizer, losses or metrics)."""
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=not unsafe)
    except Exception as e:
        if not unsafe and "safe_mode" in str(e):
            raise CLIError(
                f"{path} was refused in safe mode: it holds Python code that "
                "loading would run (e.g. a Lambda layer's function). If you "
                "trust the file, rerun with --unsafe"
            ) from e
        raise CLIError(f"could not load {path}: {type(e).__name__}: {e}") from e


def _input_shape(shapes):
    """The `--input-shape` values as `model_stats` / `surgery` take them."""
    if not shapes:
        return None
    return shapes[0] if len(shapes) == 1 else list(shapes)
