"""`keras-collapse inspect` and `keras-collapse surgery`. Paths are checked
before Keras is imported; the work is the Python API's."""

import json

from keras_collapse.cli.files import CLIError
from keras_collapse.cli.files import input_shape
from keras_collapse.cli.files import json_ready
from keras_collapse.cli.files import load_model
from keras_collapse.cli.files import model_path
from keras_collapse.cli.files import output_file
from keras_collapse.cli.files import output_model_path
from keras_collapse.cli.files import write_json
from keras_collapse.cli.startup import import_library

EXIT_OK = 0


# ------------------------------------------------------------------ inspect
def inspect_command(args):
    path = model_path(args.model)
    json_path = None if args.json in (None, "-") else output_file(args.json, path)
    keras, kc = import_library()
    from keras_collapse.report.inspection import format_inspection

    model = load_model(keras, path, args.unsafe)
    try:
        found = kc.inspect(
            model,
            input_shape=input_shape(args.input_shape),
            confidence=args.confidence,
            potential=not args.no_potential,
            exact=not args.no_exact,
        )
    except ValueError as e:
        raise CLIError(f"cannot inspect {path}: {e}") from e
    info = describe(keras, model, path, found)
    if args.json == "-":
        print(json.dumps(json_ready(info), indent=2, allow_nan=False))
        return EXIT_OK
    print(format_inspection(found, heading(info)))
    if json_path is not None:
        write_json(json_path, info)
        print(f"\nWrote {json_path}")
    return EXIT_OK


def describe(keras, model, path, found):
    """Everything `inspect` prints, as a JSON-ready dict: the file, the
    model's inputs and outputs, Keras, and `Inspection.as_dict()`."""
    return {
        "file": str(path),
        "model": model.name,
        "class": type(model).__name__,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "inputs": _shapes(getattr(model, "inputs", None)),
        "outputs": _shapes(getattr(model, "outputs", None)),
        **found.as_dict(),
    }


def heading(info):
    inputs = ", ".join(_format_shape(s) for s in info["inputs"]) or "?"
    outputs = ", ".join(_format_shape(s) for s in info["outputs"]) or "?"
    return (
        f"Model '{info['model']}' ({info['class']}) from {info['file']}\n"
        f"Inputs: {inputs}  Outputs: {outputs}  (keras {info['keras_version']}, "
        f"backend {info['backend']})"
    )


def _shapes(tensors):
    if not tensors:
        return []
    return [list(t.shape) for t in tensors]


def _format_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


# ------------------------------------------------------------------ surgery
def surgery_command(args):
    source = model_path(args.input)
    target = output_model_path(args.output, source)
    report_path = None
    if args.report is not None:
        report_path = output_file(args.report, source, target)
    keras, kc = import_library()
    model = load_model(keras, source, args.unsafe)
    try:
        small, report = kc.surgery(
            model,
            exact=not args.no_exact,
            verify=not args.no_verify,
            tolerance=args.tolerance,
            input_shape=input_shape(args.input_shape),
            return_report=True,
        )
    except kc.VerificationError as e:
        raise not_verified(e, source) from e
    except ValueError as e:
        raise CLIError(f"surgery failed on {source}: {e}") from e
    print(report)
    return finish(keras, small, report, source, target, report_path)


def not_verified(error, source):
    return CLIError(
        f"the surgery result does not compute what {source} computes: {error} "
        f"Nothing was written. If that is float32 round-off, rerun with a "
        "larger --tolerance; otherwise please report it."
    )


def finish(keras, small, report, source, target, report_path, **extra):
    """Saves the result, writes the JSON report (with `extra` fields) and
    says where: the common end of `surgery` and `collapse`."""
    save(small, target)
    if report_path is not None:
        write_json(
            report_path,
            {
                "input": str(source),
                "output": str(target),
                **extra,
                "backend": keras.backend.backend(),
                **report.as_dict(),
            },
        )
    print(f"\nSaved {target}")
    if report_path is not None:
        print(f"Wrote {report_path}")
    return EXIT_OK


def save(model, target):
    try:
        model.save(str(target))
    except Exception as e:
        raise CLIError(f"could not save the result to {target}: {e}") from e
