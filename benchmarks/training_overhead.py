"""What the collapsible machinery costs per training epoch, vs plain ReLUs.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/training_overhead.py
    .venv/bin/python benchmarks/training_overhead.py --backends jax,tensorflow,torch \\
        --out benchmarks/results/training_overhead.txt

A 4-block Conv/BN/ReLU CNN on scikit-learn's digits upsampled to 32x32,
batch 64, trained as three models with the same weights in one process:
the plain ReLU model, `make_collapsible(model)` (every ReLU a
`CollapsibleActivation`, its slope frozen: no regularizer), the same net
written with `CollapsiblePReLU` layers, `make_collapsible(model,
trainable_alpha=True)` (the slopes trained as a PReLU's: what LayerCollapse
pays), and that model with the layer's call as it was before issue 12
("previous form"; JAX and TensorFlow trace it at the first epoch, with the
swap in place), and a second copy of the ReLU model (what the timing's noise
alone gives). An epoch is one `train_on_batch` per batch: `fit` on TensorFlow
adds a per-call stall of up to a second that has nothing to do with the
model (epochs of any model there take either ~1.7 s or 2.6 s). One untimed
epoch each (compilation), then `--rounds` rounds of one epoch per model, in
an order that rotates between rounds; the table gives the median epoch time
of each and its ratio to the ReLU model's.
"""

import argparse
import gc
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


def digits_32():
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")
    x = np.kron(x, np.ones((4, 4), "float32"))[..., None]  # 8x8 -> 32x32
    return x, digits.target.astype("int32")


def cnn(activation, filters=(16, 32, 32, 64)):
    import keras

    layers = keras.layers
    inputs = keras.Input((32, 32, 1))
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = activation()(layers.BatchNormalization()(x))
        if i % 2:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def previous_call(self, inputs, training=None):
    """The layer's call before issue 12, for comparison: the infinity guard
    and the lock applied to the whole tensor, in training too."""
    from keras import ops

    act = self._activation_fn(inputs, **self.activation_kwargs)
    blended = act + self.alpha * (inputs - act)
    limit = ops.where(
        self.alpha == 0,
        act,
        ops.where(
            self.alpha == 1, inputs, self.alpha * inputs + (1 - self.alpha) * act
        ),
    )
    blended = ops.where(ops.isfinite(inputs), blended, limit)
    return ops.where(self.linear_lock > 0.5, inputs, blended)


def build_models():
    import keras

    import keras_collapse as kc

    keras.utils.set_random_seed(0)
    relu = cnn(keras.layers.ReLU)
    converted = kc.make_collapsible(relu)
    prelu = cnn(kc.CollapsiblePReLU)
    for plain, other in zip(relu.layers, prelu.layers):  # the same conv/BN weights
        if plain.weights:
            other.set_weights(plain.get_weights())
    copy = keras.models.clone_model(relu)
    copy.set_weights(relu.get_weights())
    models = {
        "ReLU": relu,
        "ReLU, second copy": copy,
        "make_collapsible": converted,
        "CollapsiblePReLU": prelu,
        "trained slope": kc.make_collapsible(relu, trainable_alpha=True),
        "previous form": kc.make_collapsible(relu, trainable_alpha=True),
    }
    for model in models.values():
        model.compile(
            keras.optimizers.SGD(0.01),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    return models


def fit(label, model, x, y):
    from keras_collapse.layers.collapsible_activation import CollapsibleActivation

    current = CollapsibleActivation.call
    if label == "previous form":  # torch runs eagerly: swapped for this fit
        CollapsibleActivation.call = previous_call
    try:
        for i in range(0, len(x), 64):
            model.train_on_batch(x[i : i + 64], y[i : i + 64])
    finally:
        CollapsibleActivation.call = current


def measure(rounds):
    x, y = digits_32()
    models = build_models()
    for label, model in models.items():  # compilation and first-call work
        fit(label, model, x, y)
    labels = list(models)
    times = {label: [] for label in labels}
    for r in range(rounds):
        start = r % len(labels)
        for label in labels[start:] + labels[:start]:
            gc.collect()
            began = time.perf_counter()
            fit(label, models[label], x, y)
            times[label].append(time.perf_counter() - began)
    seconds = {label: statistics.median(t) for label, t in times.items()}
    return [
        {"model": label, "seconds": s, "ratio": s / seconds["ReLU"], "rounds": rounds}
        for label, s in seconds.items()
    ]


def results_table(rows):
    return table(
        ("model", "epoch", "ratio to ReLU"),
        [(r["model"], f"{r['seconds']:.3f} s", f"{r['ratio']:.3f}x") for r in rows],
    )


def combined_table(collected):
    header = ["model", *[f"{b} ratio" for b in collected]]
    names = list(dict.fromkeys(r["model"] for rows in collected.values() for r in rows))
    lines = []
    for name in names:
        cells = [name]
        for rows in collected.values():
            row = next((r for r in rows if r["model"] == name), None)
            cells.append("-" if row is None else f"{row['ratio']:.3f}x")
        lines.append(cells)
    return table(header, lines)


LEGEND = (
    "epoch: median over {rounds} rounds of one training epoch (1,797 digits at "
    "32x32, batch 64, SGD, one train_on_batch per batch); ratio: over the plain "
    "ReLU model's epoch, measured side by side in this process."
)


def run_here(args):
    lines = header_lines()
    rows = measure(args.rounds)
    text = "\n".join(
        [*lines, "", results_table(rows), "", wrap(LEGEND.format(rounds=args.rounds))]
    )
    print("\n" + text)
    write_json(args.json, rows, text)
    save(args.out, text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds")
    add_run_options(parser)
    args = parser.parse_args()
    return dispatch(
        args,
        __file__,
        "Training epoch time over the plain ReLU model's (medians, one process "
        "per backend)",
        combined_table,
        run_here,
    )


if __name__ == "__main__":
    sys.exit(main())
