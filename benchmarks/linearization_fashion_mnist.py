"""TLC on real data: how many activations go, at what accuracy, for what speed.

For a ResNet-20-style and a MobileNetV2-style net on Fashion-MNIST: train a
base model, then fine-tune copies of it with `TLCCallback`
- without data (BN scores, guarded by training accuracy),
- with validation data (measured loss increase on a fixed sample, guarded by
  its accuracy),
- with a random choice of layer on the same schedule and guard as the
  data-free run (the baseline),
then `surgery`. Reported per run: activations linearized out of total, test
accuracy (linearized and collapsed), real depth / params / MACs after
surgery, latency of the result vs the BN-folded base model (batch 1 and 64,
measured side by side in this process) and the training epochs spent.

Fashion-MNIST comes from `keras.datasets.fashion_mnist` (downloads on a
machine with internet; offline, `apt-get install dataset-fashion-mnist` and
copy /usr/share/datasets/fashion-mnist/*.gz into
$KERAS_HOME/datasets/fashion-mnist/ — `scripts/dev.py run` does that).
`--dataset digits` runs a reduced version on scikit-learn's digits (what the
tests run). The committed results (about an hour on 2 cores):

    python3 scripts/dev.py run --backend tensorflow \
        benchmarks/tlc_fashion_mnist.py --out benchmarks/results/tlc_fashion_mnist
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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
                "$KERAS_HOME/datasets/fashion-mnist/ (or run this script through "
                "`python3 scripts/dev.py run benchmarks/tlc_fashion_mnist.py`)"
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


def run_model(name, args, data, log):
    import keras

    import keras_collapse as kc

    train, val, test = data
    keras.utils.set_random_seed(args.seed)
    base = kc.make_collapsible(MODELS[name](train[0].shape[1:], args.width))
    compile_model(base, args.lr)
    start = time.time()
    base.fit(*train, batch_size=args.batch_size, epochs=args.base_epochs, verbose=0)
    log(f"[{name}] base: {args.base_epochs} epochs in {time.time() - start:.0f} s")
    total = len(kc.collapsible_layers(base))
    folded, folded_report = kc.surgery(base, return_report=True)
    rows = [
        {
            "model": name,
            "run": "base (BN folded)",
            "linearized": 0,
            "activations": total,
            "accuracy": accuracy(base, test),
            "collapsed_accuracy": accuracy(folded, test),
            "depth": folded_report.after.depth,
            "params": folded_report.after.params,
            "macs": folded_report.after.macs,
            "epochs": args.base_epochs,
            "speedup_b1": 1.0,
            "speedup_b64": 1.0,
        }
    ]
    runs = {
        "TLC, data-free": dict(fit_validation=False, callback={}),
        "TLC, validation data": dict(
            fit_validation=False, callback={"validation_data": val}
        ),
        "random layer": dict(fit_validation=False, callback={"ranking": "random"}),
    }
    analyses = {}
    for run, spec in runs.items():
        keras.utils.set_random_seed(args.seed + 1)
        model = compile_model(copy_model(base), args.lr * args.finetune_lr_factor)
        tlc = kc.TLCCallback(
            warmup_epochs=args.warmup,
            interval=args.interval,
            validation_samples=args.val_samples,
            seed=args.seed,
            verbose=1,
            **spec["callback"],
        )
        start = time.time()
        model.fit(
            *train,
            batch_size=args.batch_size,
            epochs=args.tlc_epochs,
            callbacks=[tlc],
            verbose=0,
        )
        log(f"[{name}] {run}: {args.tlc_epochs} epochs in {time.time() - start:.0f} s")
        collapsed, report = kc.surgery(model, return_report=True)
        latency = kc.measure_latency(
            {"folded base": folded, "collapsed": collapsed},
            batch_sizes=(1, 64),
            repeats=args.repeats,
        )
        speedup = latency["models"]["collapsed"]["speedup"]
        analyses[run] = kc.analyze_batchnorm(model)
        rows.append(
            {
                "model": name,
                "run": run,
                "linearized": len(tlc.linearized),
                "activations": total,
                "rollbacks": tlc.rollbacks,
                "layers": list(tlc.linearized),
                "accuracy": accuracy(model, test),
                "collapsed_accuracy": accuracy(collapsed, test),
                "depth": report.after.depth,
                "params": report.after.params,
                "macs": report.after.macs,
                "epochs": args.base_epochs + args.tlc_epochs,
                "speedup_b1": speedup[1],
                "speedup_b64": speedup[64],
            }
        )
        log(f"[{name}] {run}: {rows[-1]}")
    return rows, analyses


def format_rows(rows):
    from benchmarks.common import table

    header = (
        "model",
        "run",
        "linearized",
        "test acc",
        "collapsed acc",
        "depth",
        "params",
        "MACs",
        "latency b1",
        "latency b64",
        "epochs",
    )
    body = [
        (
            r["model"],
            r["run"],
            f"{r['linearized']}/{r['activations']}",
            f"{r['accuracy']:.4f}",
            f"{r['collapsed_accuracy']:.4f}",
            r["depth"],
            f"{r['params']:,}",
            f"{r['macs']:,}",
            f"{r['speedup_b1']:.2f}x",
            f"{r['speedup_b64']:.2f}x",
            r["epochs"],
        )
        for r in rows
    ]
    return table(header, body, "<<" + ">" * (len(header) - 2))


def plot(rows, analyses, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(models), figsize=(7 * len(models), 8.5))
    axes = axes.reshape(2, len(models))
    for col, name in enumerate(models):
        ax = axes[0, col]
        for r in (r for r in rows if r["model"] == name):
            ax.scatter(r["linearized"], r["collapsed_accuracy"], s=50, label=r["run"])
            ax.annotate(
                f"{r['speedup_b64']:.2f}x", (r["linearized"], r["collapsed_accuracy"])
            )
        total = next(r["activations"] for r in rows if r["model"] == name)
        ax.set_xlabel(f"activations linearized (of {total})")
        ax.set_ylabel("test accuracy after surgery")
        ax.set_title(f"{name}: accuracy vs layers removed (label: speedup b64)")
        ax.legend(fontsize=8)
        analyses[name]["TLC, data-free"].plot(ax=axes[1, col])
        axes[1, col].set_title(f"{name}, after data-free TLC", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist"
    )
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--test", type=int, default=5000)
    parser.add_argument("--val-samples", type=int, default=1000)
    parser.add_argument("--base-epochs", type=int, default=6)
    parser.add_argument("--tlc-epochs", type=int, default=8)
    parser.add_argument(
        "--width",
        type=int,
        default=16,
        help="channels of the first stage (ResNet: 16-32-64)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--interval", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--finetune-lr-factor", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=None, help="write <out>.txt, <out>.json and <out>.png"
    )
    args = parser.parse_args(argv)

    import keras

    def log(message):
        print(message, flush=True)

    started = time.time()
    data = load_data(args.dataset, args.train, args.val, args.test, args.seed)
    log(
        f"{args.dataset}: {len(data[0][0])} train / {len(data[1][0])} validation / "
        f"{len(data[2][0])} test images; backend {keras.backend.backend()}"
    )
    rows, analyses = [], {}
    for name in args.models.split(","):
        model_rows, analyses[name] = run_model(name, args, data, log)
        rows += model_rows
    text = "\n".join(
        [
            f"TLC on {args.dataset} ({len(data[0][0])} train / {len(data[1][0])} "
            f"val / {len(data[2][0])} test), backend {keras.backend.backend()}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}, {time.time() - started:.0f} s",
            "command: KERAS_BACKEND="
            + keras.backend.backend()
            + " python "
            + " ".join(["benchmarks/tlc_fashion_mnist.py", *sys.argv[1:]]),
            f"settings: {vars(args)}",
            "latency: the collapsed model vs the BN-folded base, median of "
            f"{args.repeats} interleaved runs (>1 = faster)",
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
