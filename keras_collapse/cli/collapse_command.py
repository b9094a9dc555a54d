"""`keras-collapse collapse IN.keras OUT.keras --data train.npz`: the
one-call `keras_collapse.collapse` on a compiled saved model, with arrays
from `.npz` files."""

from keras_collapse.cli.commands import finish
from keras_collapse.cli.commands import not_verified
from keras_collapse.cli.files import CLIError
from keras_collapse.cli.files import data_path
from keras_collapse.cli.files import load_model
from keras_collapse.cli.files import model_path
from keras_collapse.cli.files import output_file
from keras_collapse.cli.files import output_model_path
from keras_collapse.cli.files import read_arrays
from keras_collapse.cli.startup import import_library


def collapse_command(args):
    source = model_path(args.input)
    target = output_model_path(args.output, source)
    train = data_path(args.data, "--data")
    validation = None
    if args.validation is not None:
        validation = data_path(args.validation, "--validation")
    report_path = None
    if args.report is not None:
        report_path = output_file(args.report, source, target, train, validation)
    keras, kc = import_library()
    data = read_arrays(train, "--data")
    validation_data = (
        None if validation is None else read_arrays(validation, "--validation")
    )
    model = load_model(keras, source, args.unsafe, compile=True)
    check_compiled(model, source)
    check_fits(model, data, "--data", train)
    if validation_data is not None:
        check_fits(model, validation_data, "--validation", validation)
    try:
        small, report = kc.collapse(
            model,
            data,
            validation_data=validation_data,
            objective=args.objective,
            target=args.target,
            epochs=args.epochs,
            batch_size=args.batch_size,
            exact=not args.no_exact,
            latency=not args.no_latency,
            verbose=0 if args.quiet else 1,
        )
    except kc.VerificationError as e:
        raise not_verified(e, source) from e
    except ValueError as e:
        raise CLIError(f"collapse failed on {source}: {e}") from e
    if args.quiet:  # otherwise collapse has printed it
        print(report)
    return finish(
        keras,
        small,
        report,
        source,
        target,
        report_path,
        data=str(train),
        validation=None if validation is None else str(validation),
    )


def check_compiled(model, source):
    if (
        getattr(model, "optimizer", None) is None
        or getattr(model, "loss", None) is None
    ):
        raise CLIError(
            f"{source} was saved without a compiled loss and optimizer, which "
            "collapse fine-tunes with: call model.compile(optimizer=..., "
            "loss=..., metrics=[...]) before model.save(), then rerun"
        )


def check_fits(model, arrays, option, path):
    """One input, and `x`'s shape that of the model's input."""
    x, _ = arrays
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise CLIError(
            f"model '{model.name}' has {len(inputs)} inputs and {option} {path} "
            "gives one array x: the command line collapses single-input models; "
            "call keras_collapse.collapse in Python for the others"
        )
    wanted = tuple(inputs[0].shape)[1:]
    got = tuple(x.shape)[1:]
    if len(got) != len(wanted) or any(
        w is not None and w != g for w, g in zip(wanted, got, strict=True)
    ):
        shown = "(rows, " + ", ".join("any" if w is None else str(w) for w in wanted)
        raise CLIError(
            f"{option} {path}: x has shape {tuple(x.shape)}, and model "
            f"'{model.name}' takes inputs of shape {shown})"
        )
