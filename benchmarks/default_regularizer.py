"""Why `CollapsiblePReLU()` no longer pulls its slope toward 1 by default.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/default_regularizer.py
    .venv/bin/python benchmarks/default_regularizer.py \\
        --backends jax,tensorflow,torch

A 6-block CNN on scikit-learn's digits (8x8 grey images; 1400 shuffled
training images, the other 397 for validation): per block Conv2D 3x3 'same'
-> BatchNormalization (default momentum 0.99) -> activation, filters
16-16-32-32-64-64, then global average pooling and a softmax Dense. Adam
(default learning rate), batch 32, 18 epochs, trained three times from the
same seed with the activation

- (a) `keras.layers.ReLU()`,
- (b) `CollapsiblePReLU(alpha_regularizer="linearity")` (the old default,
  `LinearityRegularizer(0.2)`: a pull of every slope toward 1),
- (c) `CollapsiblePReLU()` (the new default: no pull).

Printed per variant: the validation accuracy `fit` measures after each
epoch (inference mode: BN moving statistics), its min / max over the last 12
and the last 8 epochs (the first epochs of the last 12 still see the moving
statistics warming up, for every variant), the largest drop between two
consecutive epochs of the last 8, the final one, the final validation
accuracy after
`recalibrate_batchnorm(model, x_train)` (exact BN statistics), and the mean
slope `alpha` at the end. A slope that keeps moving makes the moving
statistics lag behind what the layers compute, so the inference-mode
accuracy swings from epoch to epoch; recalibration shows how much of the
swing is that lag.
"""

import argparse
import statistics
import sys
import time

from common import add_run_options
from common import dispatch
from common import header_lines
from common import save
from common import table
from common import wrap
from common import write_json

VARIANTS = {
    "relu": "(a) keras ReLU",
    "linearity": '(b) CollapsiblePReLU(alpha_regularizer="linearity") (old default)',
    "none": "(c) CollapsiblePReLU() (new default, no pull)",
}
FILTERS = (16, 16, 32, 32, 64, 64)
TRAIN = 1400
LAST = 12  # the epochs the min / max / final are taken over
# With BN momentum 0.99 and 44 steps an epoch, the moving statistics need ~8
# epochs to catch up with a fresh network (every variant is near chance at
# first): the last SETTLED epochs show the swings without that warm-up.
SETTLED = 8


def load_digits(seed):
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:TRAIN], y[:TRAIN]), (x[TRAIN:], y[TRAIN:])


def build(variant, seed):
    import keras

    import keras_collapse as kc

    layers = keras.layers
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for filters in FILTERS:
        x = layers.Conv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        if variant == "relu":
            x = layers.ReLU()(x)
        elif variant == "linearity":
            x = kc.CollapsiblePReLU(alpha_regularizer="linearity")(x)
        else:
            x = kc.CollapsiblePReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name=f"digits_cnn_{variant}")
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def accuracy(model, x, y):
    import numpy as np

    predicted = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=-1)
    return float(np.mean(predicted == y))


def mean_alpha(model):
    import keras
    import numpy as np

    import keras_collapse as kc

    alphas = [
        float(np.mean(keras.ops.convert_to_numpy(layer.alpha)))
        for layer in kc.collapsible_layers(model)
    ]
    return float(np.mean(alphas)) if alphas else None


def measure(variant, seed, epochs, batch_size):
    import keras_collapse as kc

    (x_train, y_train), (x_val, y_val) = load_digits(seed)
    model = build(variant, seed)
    began = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val),
        verbose=0,
    )
    seconds = time.perf_counter() - began
    curve = [float(v) for v in history.history["val_accuracy"]]
    last, settled = curve[-LAST:], curve[-SETTLED:]
    recalibrated = kc.recalibrate_batchnorm(model, x_train)
    return {
        "variant": variant,
        "seed": seed,
        "val_accuracy": curve,
        "min": min(last),
        "max": max(last),
        "settled_min": min(settled),
        "settled_max": max(settled),
        "largest_drop": max(
            [0.0] + [a - b for a, b in zip(settled, settled[1:], strict=False)]
        ),
        "final": curve[-1],
        "final_evaluated": accuracy(model, x_val, y_val),
        "recalibrated": accuracy(recalibrated, x_val, y_val),
        "alpha": mean_alpha(model),
        "seconds": seconds,
    }


def _alpha(value):
    return "-" if value is None else f"{value:.3f}"


def result_table(rows):
    header = (
        "variant",
        "seed",
        f"min last {LAST}",
        f"max last {LAST}",
        f"min last {SETTLED}",
        f"max last {SETTLED}",
        "largest drop",
        "final",
        "after recalibrate_batchnorm",
        "mean alpha",
        "fit s",
    )
    lines = [
        (
            VARIANTS[r["variant"]],
            r["seed"],
            f"{r['min']:.3f}",
            f"{r['max']:.3f}",
            f"{r['settled_min']:.3f}",
            f"{r['settled_max']:.3f}",
            f"{r['largest_drop']:.3f}",
            f"{r['final']:.3f}",
            f"{r['recalibrated']:.3f}",
            _alpha(r["alpha"]),
            f"{r['seconds']:.0f}",
        )
        for r in rows
    ]
    return table(header, lines)


def curves(rows):
    lines = []
    for r in rows:
        values = " ".join(f"{v:.2f}" for v in r["val_accuracy"])
        lines.append(f"  {r['variant']:>9} seed {r['seed']}: {values}")
    return "\n".join(lines)


def combined_table(collected):
    """Per variant and backend: min-max over the last epochs (over all
    seeds), the mean final accuracy and the mean after recalibration."""
    header = ["variant"]
    for backend in collected:
        header += [f"{backend} last {LAST}", f"last {SETTLED}", "final", "recal."]
    lines = []
    for variant, label in VARIANTS.items():
        cells = [label]
        for rows in collected.values():
            mine = [r for r in rows if r["variant"] == variant]
            if not mine:
                cells += ["-"] * 4
                continue
            cells += [
                _range(mine, "min", "max"),
                _range(mine, "settled_min", "settled_max"),
                f"{statistics.mean(r['final'] for r in mine):.3f}",
                f"{statistics.mean(r['recalibrated'] for r in mine):.3f}",
            ]
        lines.append(cells)
    return table(header, lines)


def _range(rows, low, high):
    """The lowest `low` and highest `high` over rows (seeds), as 'a-b'."""
    return f"{min(r[low] for r in rows):.2f}-{max(r[high] for r in rows):.2f}"


def run_here(args):
    lines = header_lines()
    rows = []
    for seed in args.seeds:
        for variant in args.variants:
            rows.append(measure(variant, seed, args.epochs, args.batch_size))
            r = rows[-1]
            print(
                f"{variant} seed {seed}: last {LAST} epochs {r['min']:.3f}-"
                f"{r['max']:.3f}, last {SETTLED} {r['settled_min']:.3f}-"
                f"{r['settled_max']:.3f}, final {r['final']:.3f}, recalibrated "
                f"{r['recalibrated']:.3f} ({r['seconds']:.0f} s)",
                flush=True,
            )
    text = "\n".join(
        [
            *lines,
            "",
            wrap(
                f"digits, {TRAIN} train / the rest validation, {args.epochs} "
                f"epochs, batch {args.batch_size}, Adam. min / max / final: the "
                f"validation accuracy fit measures after each of the last "
                f"{LAST} (and {SETTLED}) epochs (inference mode, BN moving "
                "statistics; the first epochs of the last 12 are still the "
                "moving statistics' warm-up for every variant); largest drop: "
                f"between two consecutive epochs of the last {SETTLED}; after "
                "recalibrate_batchnorm: the final model with its BN statistics "
                "re-estimated on the training images; mean alpha: the slopes "
                "at the end (0 = ReLU, 1 = identity)."
            ),
            result_table(rows),
            "",
            "Validation accuracy per epoch:",
            curves(rows),
        ]
    )
    print("\n" + text)
    write_json(args.json, rows, text)
    save(args.out, text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        type=lambda s: [v for v in s.split(",") if v],
        help=f"comma-separated subset of {list(VARIANTS)}. Default: all",
    )
    parser.add_argument(
        "--seeds",
        default="0",
        type=lambda s: [int(v) for v in s.split(",") if v],
        help="comma-separated seeds (weights and the train/validation split). "
        "Default: 0",
    )
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=32)
    add_run_options(parser)
    args = parser.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    if args.epochs < LAST:
        parser.error(f"--epochs must be at least {LAST}")
    return dispatch(
        args,
        __file__,
        f"Validation accuracy over the last {LAST} and {SETTLED} epochs "
        "(min-max over seeds), final (mean over seeds) and final after "
        "recalibrate_batchnorm (mean over seeds)",
        combined_table,
        run_here,
    )


if __name__ == "__main__":
    sys.exit(main())
