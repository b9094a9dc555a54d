"""LayerCollapse on small transformers: MLPs merged, accuracy, cost, latency.

    .venv/bin/python benchmarks/transformer_collapse.py \\
        --backends jax,tensorflow,torch --out benchmarks/results/transformer_collapse
    KERAS_BACKEND=torch .venv/bin/python benchmarks/transformer_collapse.py \\
        --dataset digits

Two models on Fashion-MNIST:
- (vit) a ViT: `keras_hub.models.ViTBackbone` on the 28x28x1 images
  (patches of 7x7: 16 tokens), the tokens averaged into a Dense(10);
- (rows) an encoder-only transformer over the image rows: 28 tokens of 28
  pixels, a Dense to the hidden size, a learned position embedding, keras-hub
  `TransformerEncoder` blocks, the tokens averaged into a Dense(10).

Each is built once (seeded) and converted twice by `kc.make_collapsible(model,
activations=["gelu"], fraction=F)`, which makes the GELUs of the deepest
ceil(F * blocks) MLPs collapsible (alpha = 0: the same function, the same
initial weights for both runs):
- the control: `alpha_regularizer=None` (no pull; the alphas train freely);
- LayerCollapse: `alpha_regularizer=kc.LinearityRegularizer(factor)`.
Both train `--epochs` epochs on the same shuffles; then the LayerCollapse
model locks the GELUs within `--tolerance` of the identity
(`kc.lock_near_linear`), and both train `--finetune-epochs` more at a tenth
of the learning rate. Then `kc.surgery` (checked on test images): the
control's removes its dropout layers (identities at inference) and writes
its blended GELUs as plain layers; LayerCollapse's also merges each
collapsed MLP's two Dense layers into one.

Reported per run: GELUs pulled / locked, MLPs collapsed (merges) of the
model's blocks, test accuracy of the model and of its surgery result (the
same up to float rounding), depth (weight layers on the longest path),
params and MACs before -> after surgery, and the latency of the surgery
result at batch 1 and 64 vs the control's surgery result, measured side by
side in one process (`kc.measure_latency`, interleaved; > 1: faster), with
a second copy of the control's result as the noise. With `--backends`, one
subprocess per backend and a combined table; `--out PATH` writes PATH.txt
(the combined table and each backend's report, with the exact commands) and
PATH.json (every row).

Fashion-MNIST comes from `keras.datasets.fashion_mnist` (downloads on a
machine with internet; offline, from $KERAS_HOME/datasets/fashion-mnist/ or
else straight from the Debian package's files in
/usr/share/datasets/fashion-mnist/). The default run uses the first 5,000
training and the first 2,000 test images, about 10-15 minutes for the
three backends on 2 shared cores. `--dataset digits` is a reduced run on
scikit-learn's digits (8x8 images: 2x2 patches, or 8 rows of 8 pixels), what
the tests run.
"""

import argparse
import gzip
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BACKENDS  # noqa: E402
from common import drop_option  # noqa: E402
from common import limit_threads  # noqa: E402
from common import machine_line  # noqa: E402
from common import parse_backends  # noqa: E402
from common import run_per_backend  # noqa: E402
from common import table  # noqa: E402
from common import versions_line  # noqa: E402
from common import wrap  # noqa: E402
from common import write_json  # noqa: E402

MODELS = {
    "vit": "ViT (keras_hub ViTBackbone)",
    "rows": "row-sequence transformer (keras_hub TransformerEncoder)",
}
CONTROL, COLLAPSE = "control", "LayerCollapse"
BATCH_SIZES = (1, 64)
FASHION_MNIST_DEB = Path("/usr/share/datasets/fashion-mnist")
# Per dataset: the defaults of the options left unset.
DEFAULTS = {
    "fashion_mnist": dict(
        train=5000,
        test=2000,
        layers=4,
        hidden=64,
        mlp=128,
        heads=4,
        patch=7,
        epochs=7,
        batch_size=32,
        lr=2e-3,
        repeats=10,
    ),
    "digits": dict(
        train=1400,
        test=397,
        layers=2,
        hidden=32,
        mlp=64,
        heads=2,
        patch=2,
        epochs=5,
        batch_size=32,
        lr=1e-2,
        repeats=3,
    ),
}
SCRIPT = "benchmarks/transformer_collapse.py"


# ---------------------------------------------------------------------- data
def load_data(name, train, test):
    """Returns (x_train, y_train), (x_test, y_test): float32 images in [0, 1]
    of shape (n, height, width), the first `train` / `test` of each split,
    and a line saying which."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = (digits.images / 16.0).astype("float32"), digits.target
        if train + test > len(x):
            raise SystemExit(f"digits has {len(x)} images: --train + --test > that")
        subset = (
            f"scikit-learn digits: images 0-{train - 1} for training, the last "
            f"{test} for testing"
        )
        return (x[:train], y[:train]), (x[-test:], y[-test:]), subset
    (x, y), (x_test, y_test), source = _fashion_mnist()
    subset = (
        f"Fashion-MNIST ({source}): the first {train} of the 60,000 training "
        f"images, the first {test} of the 10,000 test images"
    )
    x = (x[:train] / 255.0).astype("float32")
    x_test = (x_test[:test] / 255.0).astype("float32")
    return (x, y[:train].astype("int64")), (x_test, y_test[:test]), subset


def _fashion_mnist():
    import keras

    try:
        return (*keras.datasets.fashion_mnist.load_data(), "keras.datasets")
    except Exception as error:
        if not FASHION_MNIST_DEB.is_dir():
            raise SystemExit(
                f"Fashion-MNIST is not available ({type(error).__name__}: "
                f"{error}). Offline: `apt-get install -y dataset-fashion-mnist`"
            ) from None
    # What keras.datasets reads, from the Debian package's copy of the files.
    import numpy as np

    def read(name, offset):
        with gzip.open(FASHION_MNIST_DEB / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    x = read("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    x_test = read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    y = read("train-labels-idx1-ubyte.gz", 8)
    y_test = read("t10k-labels-idx1-ubyte.gz", 8)
    return (x, y), (x_test, y_test), str(FASHION_MNIST_DEB)


# -------------------------------------------------------------------- models
def build(name, image_shape, args):
    """The plain model (GELUs everywhere, dropout 0.1), seeded by the caller."""
    import keras
    import keras_hub

    height, width = image_shape
    if name == "vit":
        inputs = keras.Input((height, width, 1))
        backbone = keras_hub.models.ViTBackbone(
            image_shape=(height, width, 1),
            patch_size=args.patch,
            num_layers=args.layers,
            num_heads=args.heads,
            hidden_dim=args.hidden,
            mlp_dim=args.mlp,
            dropout_rate=0.1,
            use_class_token=False,
            name="vit_backbone",
        )
        h = backbone(inputs)
    else:
        inputs = keras.Input((height, width))
        h = keras.layers.Dense(args.hidden, name="token_embedding")(inputs)
        positions = keras_hub.layers.PositionEmbedding(height, name="positions")(h)
        h = keras.layers.Add()([h, positions])
        for i in range(args.layers):
            h = keras_hub.layers.TransformerEncoder(
                args.mlp,
                args.heads,
                dropout=0.1,
                activation="gelu",
                name=f"encoder_{i}",
            )(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="classifier")(h), name=name)


def inputs_for(name, x):
    return x[..., None] if name == "vit" else x


# ---------------------------------------------------------------------- runs
def run_model(name, args, data, log):
    """Trains the control and the LayerCollapse run of one model; rows."""
    import keras

    import keras_collapse as kc

    (x, y), (x_test, y_test) = data
    x, x_test = inputs_for(name, x), inputs_for(name, x_test)
    keras.utils.set_random_seed(args.seed)
    base = build(name, data[0][0].shape[1:], args)
    runs = {
        CONTROL: kc.make_collapsible(
            base, activations=["gelu"], fraction=args.fraction
        ),
        COLLAPSE: kc.make_collapsible(
            base,
            activations=["gelu"],
            alpha_regularizer=kc.LinearityRegularizer(args.factor),
            fraction=args.fraction,
        ),
    }
    every = kc.make_collapsible(base, activations=["gelu"])
    gelus = len(kc.collapsible_layers(every))  # all of the model's GELUs
    rows, results = [], {}
    for run, model in runs.items():
        pulled = [layer.name for layer in kc.collapsible_layers(model)]
        model.compile(
            keras.optimizers.Adam(args.lr),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        began = time.perf_counter()
        keras.utils.set_random_seed(args.seed + 1)  # the same shuffles for both
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
        alphas = {
            layer.name: float(layer.alpha_numpy())
            for layer in kc.collapsible_layers(model)
        }
        locked = []
        if run == COLLAPSE:
            locked = [
                layer.name for layer in kc.lock_near_linear(model, args.tolerance)
            ]
        model.optimizer.learning_rate = args.lr / 10
        keras.utils.set_random_seed(args.seed + 2)
        model.fit(
            x, y, batch_size=args.batch_size, epochs=args.finetune_epochs, verbose=0
        )
        fit_seconds = time.perf_counter() - began
        result, report = kc.surgery(
            model, return_report=True, sample_inputs=x_test[:64]
        )
        results[run] = result
        merges = [entry for entry in report.done if entry.kind == "merge"]
        rows.append(
            {
                "model": name,
                "run": run,
                "gelus": gelus,
                "pulled": pulled if run == COLLAPSE else [],
                "converted": pulled,
                "alphas": alphas,
                "locked": locked,
                "blocks": args.layers,
                "mlps_collapsed": len(merges),
                "merged": [list(entry.layers) for entry in merges],
                "accuracy": _accuracy(model, x_test, y_test),
                "surgery_accuracy": _accuracy(result, x_test, y_test),
                "deviation": report.deviation,
                "before": report.before.as_dict(),
                "after": report.after.as_dict(),
                "epochs": args.epochs + args.finetune_epochs,
                "fit_seconds": fit_seconds,
            }
        )
        log(
            f"[{name}] {run}: {rows[-1]['epochs']} epochs in {fit_seconds:.0f} s, "
            f"alphas {_rounded(alphas)}, locked {locked}, test accuracy "
            f"{rows[-1]['accuracy']:.4f} (surgery result "
            f"{rows[-1]['surgery_accuracy']:.4f}), MLPs collapsed {len(merges)}"
        )
    _time(base, runs[CONTROL], results, rows, args.repeats)
    return rows


def _time(base, control, results, rows, repeats):
    """Latency of both surgery results, a copy of the control's (the noise)
    and the plain model's (GELUs, dropout removed), interleaved."""
    import keras_collapse as kc

    timed = {
        "control": results[CONTROL],
        "control copy": kc.surgery(control, verify=False),
        "plain": kc.surgery(base, verify=False),
        "LayerCollapse": results[COLLAPSE],
    }
    latency = kc.measure_latency(timed, batch_sizes=BATCH_SIZES, repeats=repeats)
    entries = latency["models"]
    for row in rows:
        label = "control" if row["run"] == CONTROL else "LayerCollapse"
        row["latency"] = {
            str(size): {
                "ms": 1e3 * entries[label]["seconds"][size],
                "control_ms": 1e3 * entries["control"]["seconds"][size],
                "plain_ms": 1e3 * entries["plain"]["seconds"][size],
                "ratio": entries[label]["speedup"][size],
                "noise": entries["control copy"]["speedup"][size],
                "vs_plain": entries["plain"]["seconds"][size]
                / entries[label]["seconds"][size],
            }
            for size in BATCH_SIZES
        }


def _accuracy(model, x, y):
    import keras

    if not model.compiled:
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    result = model.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
    return result["accuracy"]


def _rounded(alphas):
    return {k: round(v, 3) for k, v in alphas.items()}


# -------------------------------------------------------------------- tables
def _arrow(row, key, fmt="{:,}"):
    return f"{fmt.format(row['before'][key])} -> {fmt.format(row['after'][key])}"


def results_table(rows):
    header = (
        "model",
        "run",
        "GELUs pulled",
        "locked",
        "MLPs collapsed",
        "test acc",
        "after surgery",
        "depth",
        "params",
        "MACs/sample",
        "b1",
        "b64",
        "epochs",
        "fit s",
    )
    body = [
        (
            r["model"],
            r["run"],
            f"{len(r['pulled'])}/{r['gelus']}",
            len(r["locked"]),
            f"{r['mlps_collapsed']}/{r['blocks']}",
            f"{r['accuracy']:.4f}",
            f"{r['surgery_accuracy']:.4f}",
            _arrow(r, "depth", "{}"),
            _arrow(r, "params"),
            _arrow(r, "macs"),
            _ratio(r, "1"),
            _ratio(r, "64"),
            r["epochs"],
            f"{r['fit_seconds']:.0f}",
        )
        for r in rows
    ]
    return table(header, body, "<<" + ">" * (len(header) - 2))


def _ratio(row, size):
    entry = row["latency"][size]
    if row["run"] == CONTROL:
        return f"({entry['noise']:.2f})"
    return f"{entry['ratio']:.2f}x"


def latency_table(rows):
    header = ["model", "run"]
    for size in BATCH_SIZES:
        header += [f"b{size} ms", "vs control", "vs plain"]
    body = []
    for r in rows:
        cells = [r["model"], r["run"]]
        for size in BATCH_SIZES:
            entry = r["latency"][str(size)]
            cells += [
                f"{entry['ms']:.3g}",
                f"{entry['ratio']:.2f}x",
                f"{entry['vs_plain']:.2f}x",
            ]
        body.append(cells)
    return table(header, body, "<<" + ">" * (len(header) - 2))


def combined_table(collected):
    """One row per model and run; per backend: accuracy after surgery, MLPs
    collapsed, latency ratio vs the control at batch 1 and 64."""
    header = ["model", "run"]
    for backend in collected:
        header += [f"{backend} acc", "MLPs", "b1", "b64"]
    keys = []
    for rows in collected.values():
        keys += [
            (r["model"], r["run"]) for r in rows if (r["model"], r["run"]) not in keys
        ]
    body = []
    for model, run in keys:
        cells = [model, run]
        for rows in collected.values():
            row = next(
                (r for r in rows if (r["model"], r["run"]) == (model, run)), None
            )
            if row is None:
                cells += ["-"] * 4
                continue
            cells += [
                f"{row['surgery_accuracy']:.4f}",
                f"{row['mlps_collapsed']}/{row['blocks']}",
                _ratio(row, "1"),
                _ratio(row, "64"),
            ]
        body.append(cells)
    return table(header, body, "<<" + ">" * (len(header) - 2))


def stats_lines(collected):
    """Depth, params and MACs per model and run (the same on every backend
    when the same MLPs collapse), from the first backend that has them."""
    lines = []
    for backend, rows in collected.items():
        for r in rows:
            lines.append(
                f"  {backend} {r['model']} {r['run']}: depth "
                f"{_arrow(r, 'depth', '{}')}, params {_arrow(r, 'params')}, "
                f"MACs/sample {_arrow(r, 'macs')}, epochs {r['epochs']}"
            )
    return lines


# ---------------------------------------------------------------------- main
def command(argv):
    """The command line of this process, as one could type it again."""
    backend = os.environ.get("KERAS_BACKEND")
    prefix = f"KERAS_BACKEND={backend} " if backend else ""
    args = drop_option(list(argv), "--json")
    return prefix + shlex.join([".venv/bin/python", SCRIPT, *args])


def write(out, text, payload):
    if not out:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text.rstrip() + "\n")
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    print(f"\nSaved to {out.with_suffix('.txt')} and {out.with_suffix('.json')}")


def run_here(args, argv):
    import keras

    lines = [f"# {command(argv)}", f"# {machine_line()}", f"# {versions_line()}"]
    print("\n".join(lines), flush=True)
    began = time.perf_counter()
    train, test, subset = load_data(args.dataset, args.train, args.test)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "backends")}
    print(subset, flush=True)

    def log(message):
        print(message, flush=True)

    rows = []
    for name in args.models:
        rows += run_model(name, args, (train, test), log)
    text = "\n".join(
        [
            *lines,
            f"# {time.perf_counter() - began:.0f} s in all on "
            f"{keras.backend.backend()}",
            "",
            f"data: {subset}",
            f"settings: {settings}",
            wrap(
                "GELUs pulled: of the model's GELUs, those made collapsible "
                f"(deepest first, fraction {args.fraction}) with the "
                f"LinearityRegularizer({args.factor}) pull; the control converts "
                "the same ones with no pull. locked: GELUs within "
                f"{args.tolerance} of the identity after {args.epochs} epochs "
                "(lock_near_linear). MLPs collapsed: merges of fc1 and fc2 by "
                "surgery, of the model's blocks. test acc: the trained model; "
                "after surgery: its surgery result. depth (weight layers on the "
                "longest path), params, MACs: the trained model -> its surgery "
                "result. b1, b64: latency of the surgery result vs the control's "
                "surgery result (> 1: faster); on the control's row, in brackets, "
                "a second copy of the control's result vs the first (the noise, "
                f"ideally 1.00). epochs: {args.epochs} + {args.finetune_epochs} "
                "at a tenth of the learning rate, after locking; fit s: wall time "
                "of both fits."
            ),
            results_table(rows),
            "",
            wrap(
                f"Latency, median of {args.repeats} interleaved calls per batch "
                "size (the faster of model(x) and predict_on_batch): ms; vs "
                "control: the control's surgery result time / this one's; vs "
                "plain: the plain model's (GELUs, dropout removed) / this one's. "
                "The control's result is slower than the plain model where its "
                "trained blends alpha * x + (1 - alpha) * gelu(x) are plain layers."
            ),
            latency_table(rows),
        ]
    )
    print("\n" + text, flush=True)
    write_json(args.json, rows, text)
    write(args.out, text, {"command": command(argv), "rows": rows})
    return rows


def run_backends(args, argv):
    """One subprocess per backend (this process never imports Keras)."""
    forwarded = drop_option(drop_option(list(argv), "--backends"), "--out")
    machine = machine_line()  # the load at start, before the children run
    began = time.perf_counter()
    collected = run_per_backend(str(Path(__file__).resolve()), args.backends, forwarded)
    rows = {backend: payload["rows"] for backend, payload in collected.items()}
    parent = shlex.join([".venv/bin/python", SCRIPT, *argv])
    summary = "\n".join(
        [
            f"# {parent}",
            f"# {machine}",
            f"# {time.perf_counter() - began:.0f} s in all",
            "",
            wrap(
                "Accuracy of the surgery result on the test images, MLPs collapsed "
                "(of the blocks), latency of the surgery result vs the control's "
                "surgery result at batch 1 and 64 (> 1: faster; on the control's "
                "row the noise: a copy of its result vs itself), per backend"
            ),
            combined_table(rows) if rows else "(no backend finished)",
            "",
            "Depth, params, MACs (trained model -> surgery result):",
            *stats_lines(rows),
        ]
    )
    print("\n" + summary)
    reports = [f"\n######## {b}\n{p['text']}" for b, p in collected.items()]
    write(
        args.out,
        "\n".join([summary, *reports]),
        {"command": parent, "backends": rows},
    )
    return 0 if len(collected) == len(args.backends) else 1


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="fashion_mnist")
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        help=f"a comma-separated subset of {list(MODELS)}",
    )
    for option, kind, what in (
        ("--train", int, "training images (the first of the split)"),
        ("--test", int, "test images (the first of the split)"),
        ("--layers", int, "transformer blocks"),
        ("--hidden", int, "hidden size"),
        ("--mlp", int, "MLP inner size"),
        ("--heads", int, "attention heads"),
        ("--patch", int, "ViT patch size"),
        ("--epochs", int, "epochs before locking, both runs"),
        ("--batch-size", int, "batch size"),
        ("--lr", float, "Adam's learning rate"),
        ("--repeats", int, "timed calls per model and batch size"),
    ):
        defaults = ", ".join(
            f"{d} {DEFAULTS[d][option[2:].replace('-', '_')]}" for d in DEFAULTS
        )
        parser.add_argument(option, type=kind, help=f"{what}. Default: {defaults}")
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=1,
        help="epochs after locking, at a tenth of the learning rate. Default: 1",
    )
    parser.add_argument(
        "--factor",
        type=float,
        default=2.0,
        help="LinearityRegularizer factor. Default: 2",
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=0.5,
        help="share of the GELUs made collapsible, deepest first. Default: 0.5",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="of lock_near_linear. Default: 0.05",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backends",
        type=parse_backends,
        help=f"comma-separated subset of {BACKENDS}: one subprocess per "
        "backend and a combined table. Default: the current KERAS_BACKEND only",
    )
    parser.add_argument("--out", help="write OUT.txt and OUT.json")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="compute threads per backend (see common.limit_threads); 0: each "
        "backend's own choice. Default: 1 (on 2 shared cores, torch's two "
        "threads waiting for each other trained these models >10x slower)",
    )
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; expected some of {list(MODELS)}")
    for key, value in DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    threads = args.threads or None
    if "keras" not in sys.modules:
        limit_threads(threads)
    elif threads is not None and args.backends is None:
        raise SystemExit(
            "--threads must be set before Keras is imported: in a process that "
            "already imported it, pass --threads 0"
        )
    if args.backends:
        return run_backends(args, argv)
    return run_here(args, argv)


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
