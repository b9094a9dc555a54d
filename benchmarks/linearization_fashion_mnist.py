"""Linearization methods on real data, side by side, on one epoch budget.

For a ResNet-20-style and a MobileNetV2-style net on Fashion-MNIST: train a
base model, then fine-tune copies of it for the same number of epochs
- with no callback (the control: what the extra epochs alone give),
- with `TLCCallback()` (data-free: BN scores, guarded by training accuracy),
- with `TLCCallback(data=x_train)` (Gaussian model fed with the mean / std
  measured on a training sample; BN statistics re-estimated on it),
- with `TLCCallback(validation_data=(x_val, y_val))` (measured loss ranking,
  guarded by the sample's accuracy),
- with `EASIERCallback(data=x_train, validation_data=(x_val, y_val))`
  (ON/OFF entropy on a training sample, guarded on the validation sample),
- with `NEPENTHECallback(x_train, validation_data=(x_val, y_val))`
  (unstructured pruning rounds steered to low-entropy layers, zero-entropy
  layers linearized; the rounds the budget allows, no ramp),
- with `TLCCallback(ranking="random")` (random layer, data-free schedule and
  guard: the baseline a ranking must beat),
then `surgery`. Reported per run: activations linearized out of total,
rollbacks, kernel sparsity (NEPENTHE's masks), test accuracy (of the
fine-tuned model and of its surgery result,
which must agree), test accuracy after `recalibrate_batchnorm` on the
training sample, real depth / params / MACs after surgery, latency of the
result vs the BN-folded base model (batch 1 and 64, measured side by side in
this process), the training epochs spent and the fine-tuning wall time.

The callbacks run on the library's defaults (warmup 1, interval 2, ramp 1)
unless `--interval` / `--ramp-epochs` are given; the seed of the shuffling is
the same for every fine-tuning run.

Fashion-MNIST comes from `keras.datasets.fashion_mnist` (downloads on a
machine with internet; offline, `apt-get install dataset-fashion-mnist` and
copy /usr/share/datasets/fashion-mnist/*.gz into
$KERAS_HOME/datasets/fashion-mnist/ -- `scripts/dev.py run` does that).
`--dataset digits` runs a reduced version on scikit-learn's digits (what the
tests run). The defaults are the sizes of the committed results (about 30
minutes on 2 shared cores with TensorFlow; the command is in the .txt):

    python3 scripts/dev.py run --backend tensorflow \\
        benchmarks/linearization_fashion_mnist.py --train 3000 --val 500 \\
        --test 2000 --width 8 --base-epochs 4 --finetune-epochs 8 \\
        --repeats 10 --out benchmarks/results/linearization_fashion_mnist
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BASE = "base (BN folded)"
CONTROL = "fine-tune control"
# `--runs` key -> the run's label in the table
RUNS = {
    "control": CONTROL,
    "tlc": "TLC, data-free",
    "tlc-data": "TLC, data",
    "tlc-validation": "TLC, validation",
    "easier": "EASIER",
    "nepenthe": "NEPENTHE",
    "random": "random layer",
}


def load_data(name, train, val, test, seed):
    """Returns (x_train, y_train), (x_val, y_val), (x_test, y_test), float32
    images in [0, 1] with a channel axis; val is held out of the train split."""
    import numpy as np

    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = (digits.images / 16.0).astype("float32")[..., None], digits.target
        order = np.random.default_rng(seed).permutation(len(x))
        x, y = x[order], y[order]
        x_test, y_test = x[-test:], y[-test:]
        x, y = x[:-test], y[:-test]
    else:
        import keras

        try:
            (x, y), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
        except Exception as e:
            raise SystemExit(
                f"Fashion-MNIST is not available ({type(e).__name__}: {e}). "
                "Offline: `apt-get install -y dataset-fashion-mnist`, then copy "
                "/usr/share/datasets/fashion-mnist/*.gz into "
                "$KERAS_HOME/datasets/fashion-mnist/ (or run this script "
                "through `python3 scripts/dev.py run "
                "benchmarks/linearization_fashion_mnist.py`)"
            ) from None
        x = (x / 255.0).astype("float32")[..., None]
        x_test = (x_test / 255.0).astype("float32")[..., None][:test]
        y_test = y_test[:test]
        order = np.random.default_rng(seed).permutation(len(x))
        x, y = x[order], y[order]
    return (
        (x[:train], y[:train]),
        (x[train : train + val], y[train : train + val]),
        (x_test, y_test),
    )


def resnet20_style(input_shape, width=16):
    """ResNet-20 (3 stages x 3 basic blocks) with plain ReLUs."""
    import keras

    layers = keras.layers

    def conv_bn(x, filters, kernel, strides=1):
        x = layers.Conv2D(filters, kernel, strides, "same", use_bias=False)(x)
        return layers.BatchNormalization(momentum=0.9)(x)

    inputs = keras.Input(input_shape)
    x = layers.ReLU()(conv_bn(inputs, width, 3))
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            h = layers.ReLU()(conv_bn(x, filters, 3, stride))
            h = conv_bn(h, filters, 3)
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                shortcut = conv_bn(x, filters, 1, stride)
            x = layers.ReLU()(layers.Add()([shortcut, h]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x), name="resnet20_style")


def mobilenet_v2_style(input_shape, width=16):
    """A MobileNetV2-style net: stem, 7 inverted-residual blocks (ReLU6,
    expansion 6), head 1x1 conv."""
    import keras

    layers = keras.layers
    w = width / 16
    blocks = [
        (round(w * c), s)
        for c, s in ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (48, 1), (48, 1))
    ]

    def conv_bn(x, filters, kernel, strides=1):
        x = layers.Conv2D(filters, kernel, strides, "same", use_bias=False)(x)
        return layers.BatchNormalization(momentum=0.9)(x)

    inputs = keras.Input(input_shape)
    x = layers.ReLU(6.0)(conv_bn(inputs, 2 * width, 3))
    for filters, stride in blocks:
        channels = x.shape[-1]
        h = layers.ReLU(6.0)(conv_bn(x, 6 * channels, 1))
        h = layers.DepthwiseConv2D(3, stride, "same", use_bias=False)(h)
        h = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9)(h))
        h = conv_bn(h, filters, 1)
        x = layers.Add()([x, h]) if stride == 1 and channels == filters else h
    x = layers.ReLU(6.0)(conv_bn(x, 8 * width, 1))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x), name="mobilenet_v2_style")


MODELS = {"resnet20": resnet20_style, "mobilenetv2": mobilenet_v2_style}


def compile_model(model, lr):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def copy_model(model):
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def accuracy(model, data):
    if not model.compiled:
        compile_model(model, 1e-3)
    result = model.evaluate(*data, batch_size=256, verbose=0, return_dict=True)
    return result["accuracy"]


def make_callback(run, args, train, val):
    """The callback of one fine-tuning run (None for the control)."""
    import keras_collapse as kc

    schedule = {
        key: value
        for key, value in (
            ("warmup_epochs", args.warmup),
            ("interval", args.interval),
            ("ramp_epochs", args.ramp_epochs),
        )
        if value is not None
    }
    common = dict(seed=args.seed, verbose=1, **schedule)
    sized = dict(samples=args.samples, **common)
    if run == CONTROL:
        return None
    if run == "TLC, data-free":
        return kc.TLCCallback(**common)
    if run == "TLC, data":
        return kc.TLCCallback(data=train[0], **sized)
    if run == "TLC, validation":
        return kc.TLCCallback(validation_data=val, **sized)
    if run == "EASIER":
        return kc.EASIERCallback(
            data=train[0], validation_data=val, samples=args.samples, **common
        )
    if run == "NEPENTHE":
        # Pruning rounds act at once: no ramp.
        pruning = {k: v for k, v in common.items() if k != "ramp_epochs"}
        return kc.NEPENTHECallback(
            train[0], validation_data=val, samples=args.samples, **pruning
        )
    if run == "random layer":
        return kc.TLCCallback(ranking="random", **common)
    raise ValueError(f"unknown run {run!r}")


def run_model(name, args, data, log):
    import keras

    import keras_collapse as kc

    train, val, test = data
    calibration = train[0][: args.samples]
    keras.utils.set_random_seed(args.seed)
    base = kc.make_collapsible(MODELS[name](train[0].shape[1:], args.width))
    compile_model(base, args.lr)
    start = time.time()
    base.fit(*train, batch_size=args.batch_size, epochs=args.base_epochs, verbose=0)
    base_seconds = time.time() - start
    log(f"[{name}] base: {args.base_epochs} epochs in {base_seconds:.0f} s")
    total = len(kc.collapsible_layers(base))
    folded, folded_report = kc.surgery(base, return_report=True)
    base_accuracy = accuracy(base, test)
    rows = [
        {
            "model": name,
            "run": BASE,
            "linearized": 0,
            "activations": total,
            "rollbacks": 0,
            "sparsity": 0.0,
            "layers": [],
            "accuracy": base_accuracy,
            "collapsed_accuracy": accuracy(folded, test),
            "recalibrated_accuracy": accuracy(
                kc.recalibrate_batchnorm(base, calibration), test
            ),
            "depth": folded_report.after.depth,
            "params": folded_report.after.params,
            "macs": folded_report.after.macs,
            "epochs": args.base_epochs,
            "fit_seconds": base_seconds,
            "speedup_b1": 1.0,
            "speedup_b64": 1.0,
        }
    ]
    analyses = {}
    for run in args.runs:
        keras.utils.set_random_seed(args.seed + 1)  # same shuffles for every run
        model = compile_model(copy_model(base), args.lr * args.finetune_lr_factor)
        callback = make_callback(run, args, train, val)
        start = time.time()
        model.fit(
            *train,
            batch_size=args.batch_size,
            epochs=args.finetune_epochs,
            callbacks=[callback] if callback is not None else [],
            verbose=0,
        )
        seconds = time.time() - start
        log(f"[{name}] {run}: {args.finetune_epochs} epochs in {seconds:.0f} s")
        collapsed, report = kc.surgery(model, return_report=True)
        latency = kc.measure_latency(
            {"folded base": folded, "collapsed": collapsed},
            batch_sizes=(1, 64),
            repeats=args.repeats,
        )
        speedup = latency["models"]["collapsed"]["speedup"]
        analyses[run] = kc.analyze_batchnorm(model)
        events = [
            {k: v for k, v in e.items() if k != "ranked"}
            for e in (callback.events if callback is not None else [])
        ]
        rows.append(
            {
                "model": name,
                "run": run,
                "linearized": len(callback.linearized) if callback else 0,
                "activations": total,
                "rollbacks": callback.rollbacks if callback else 0,
                # NEPENTHE's own count: its channels pruned at a BN are
                # held by masks on gamma and beta, not on the kernel.
                "sparsity": callback._overall()
                if isinstance(callback, kc.NEPENTHECallback)
                else kc.sparsity(model).overall,
                "layers": list(callback.linearized) if callback else [],
                "monitored": callback.monitored if callback else None,
                "accuracy": accuracy(model, test),
                "collapsed_accuracy": accuracy(collapsed, test),
                "recalibrated_accuracy": accuracy(
                    kc.recalibrate_batchnorm(model, calibration), test
                ),
                "depth": report.after.depth,
                "params": report.after.params,
                "macs": report.after.macs,
                "epochs": args.base_epochs + args.finetune_epochs,
                "fit_seconds": seconds,
                "speedup_b1": speedup[1],
                "speedup_b64": speedup[64],
                "events": events,
            }
        )
        shown = {k: v for k, v in rows[-1].items() if k != "events"}
        log(f"[{name}] {run}: {shown}")
    return rows, analyses


def format_rows(rows):
    from benchmarks.common import table

    header = (
        "model",
        "run",
        "linearized",
        "rollbacks",
        "sparsity",
        "test acc",
        "after surgery",
        "BN recal.",
        "depth",
        "params",
        "MACs",
        "latency b1",
        "latency b64",
        "epochs",
        "fit s",
    )
    body = [
        (
            r["model"],
            r["run"],
            f"{r['linearized']}/{r['activations']}",
            r["rollbacks"],
            f"{r['sparsity']:.0%}",
            f"{r['accuracy']:.4f}",
            f"{r['collapsed_accuracy']:.4f}",
            f"{r['recalibrated_accuracy']:.4f}",
            r["depth"],
            f"{r['params']:,}",
            f"{r['macs']:,}",
            f"{r['speedup_b1']:.2f}x",
            f"{r['speedup_b64']:.2f}x",
            r["epochs"],
            f"{r['fit_seconds']:.0f}",
        )
        for r in rows
    ]
    return table(header, body, "<<" + ">" * (len(header) - 2))


def plot(rows, analyses, path):
    """Accuracy against activations linearized per net (top) and the BN
    analysis after data-free TLC (bottom), saved to `path`; returns the
    (closed) figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(models), figsize=(7 * len(models), 9))
    axes = axes.reshape(2, len(models))
    markers = "o^sDvP*X"
    for col, name in enumerate(models):
        ax = axes[0, col]
        model_rows = [r for r in rows if r["model"] == name]
        for i, r in enumerate(model_rows):
            ax.scatter(
                r["linearized"],
                r["collapsed_accuracy"],
                s=60,
                marker=markers[i % len(markers)],
                label=f"{r['run']} ({r['speedup_b64']:.2f}x b64)",
            )
        total = model_rows[0]["activations"]
        ax.set_xlabel(f"activations linearized (of {total})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 1.5
        ax.set_ylabel("test accuracy after surgery")
        ax.set_title(f"{name}: accuracy vs activations linearized")
        # Under the axes: inside, it covered points; right of it, the next net.
        ax.legend(
            fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            ncol=2,
            borderaxespad=0.0,
        )
        bottom = axes[1, col]
        if "TLC, data-free" in analyses.get(name, {}):
            analyses[name]["TLC, data-free"].plot(ax=bottom)
            bottom.set_title(  # above the figure's legend
                f"{name}, BN analysis after data-free TLC", fontsize=9, pad=20
            )
        else:
            bottom.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return fig


def command(argv):
    """The command line, as one could type it again from the repository root."""
    import keras

    script = "benchmarks/linearization_fashion_mnist.py"
    return shlex.join(
        ["python3", "scripts/dev.py", "run", "--backend", keras.backend.backend()]
        + [script, *argv]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist"
    )
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument(
        "--runs",
        default=",".join(RUNS),
        type=lambda s: [r.strip() for r in s.split(",") if r.strip()],
        help=f"fine-tuning runs, a comma-separated subset of {list(RUNS)}",
    )
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument(
        "--samples",
        type=int,
        default=1024,
        help="size of the callbacks' fixed samples (TLC's samples, "
        "EASIER's samples) and of the BN recalibration sample",
    )
    parser.add_argument("--base-epochs", type=int, default=4)
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=8,
        help="epochs of every fine-tuning run, the control's included",
    )
    parser.add_argument(
        "--width",
        type=int,
        default=8,
        help="channels of the first stage (ResNet: width, 2 x, 4 x; 16 is "
        "the original ResNet-20)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="default: the library's (1)"
    )
    parser.add_argument(
        "--interval", type=int, default=None, help="default: the library's (2)"
    )
    parser.add_argument(
        "--ramp-epochs", type=int, default=None, help="default: the library's (1)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--finetune-lr-factor", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=None, help="write <out>.txt, <out>.json and <out>.png"
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.runs) - set(RUNS))
    if unknown:
        parser.error(f"unknown run(s) {unknown}; expected some of {list(RUNS)}")
    args.runs = [RUNS[key] for key in args.runs]

    import keras

    def log(message):
        print(message, flush=True)

    started = time.time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    data = load_data(args.dataset, args.train, args.val, args.test, args.seed)
    log(
        f"{args.dataset}: {len(data[0][0])} train / {len(data[1][0])} validation / "
        f"{len(data[2][0])} test images; backend {keras.backend.backend()}"
    )
    rows, analyses = [], {}
    for name in args.models.split(","):
        model_rows, analyses[name] = run_model(name, args, data, log)
        rows += model_rows
    schedule = ", ".join(
        f"{key} {'library default' if value is None else value}"
        for key, value in (
            ("warmup_epochs", args.warmup),
            ("interval", args.interval),
            ("ramp_epochs", args.ramp_epochs),
        )
    )
    text = "\n".join(
        [
            f"Linearization on {args.dataset} ({len(data[0][0])} train / "
            f"{len(data[1][0])} val / {len(data[2][0])} test), backend "
            f"{keras.backend.backend()} {keras.__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}, {time.time() - started:.0f} s in "
            f"all, {os.cpu_count()} CPUs, load average {load:.1f} at start",
            "command: " + command(argv),
            f"settings: {vars(args)}",
            f"callback schedule: {schedule}; every fine-tuning run (control "
            f"included) trains {args.finetune_epochs} epochs after the "
            f"{args.base_epochs} of the base",
            "test acc: the fine-tuned model; after surgery: its surgery result "
            "(the same up to float rounding); BN recal.: the model after "
            f"recalibrate_batchnorm on {len(data[0][0][: args.samples])} "
            "training images",
            "latency: the surgery result vs the BN-folded base, median of "
            f"{args.repeats} interleaved runs (>1 = faster); fit s: wall time "
            "of the fine-tuning fit (callback included)",
            "sparsity: the pruned share of NEPENTHE's candidate kernels (a "
            "channel pruned at its BN counts its kernel column; its rounds act "
            "at once: no ramp); pruned channels are zeros the surgery may cut, "
            "single weights stay dense",
            "",
            format_rows(rows),
        ]
    )
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".txt").write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
        plot(rows, analyses, out.with_suffix(".png"))
    return rows


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    main()
