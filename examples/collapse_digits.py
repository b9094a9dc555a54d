"""The main job: train a small CNN with collapsible activations, collapse it.

Trains a MobileNetV2-style CNN whose activations are `CollapsiblePReLU`s
carrying a `LinearityRegularizer` on real data (scikit-learn's digits, which
ship inside its wheel; `--dataset fashion_mnist` for a 12k-image subset of
Fashion-MNIST, slower; `auto` takes Fashion-MNIST when it can be loaded),
locks the activations that training pulled to within `--tolerance` of the
identity, runs `keras_collapse.surgery` and prints the before/after report
with accuracy and latency.

    python3 scripts/dev.py demo                       # sets up, then runs this
    python3 scripts/dev.py demo -- --dataset fashion_mnist --epochs 10
"""

import argparse
import os
import tempfile
import time

import keras
import numpy as np

import keras_collapse as kc


def load_data(name):
    """Returns (x_train, y_train, x_test, y_test, name) scaled to [0, 1]."""
    if name in ("auto", "fashion_mnist"):
        try:
            (x_train, y_train), (x_test, y_test) = (
                keras.datasets.fashion_mnist.load_data()
            )
            # A stated subset keeps the job to a few minutes on 2 CPU cores.
            x_train, y_train = x_train[:12000], y_train[:12000]
            x_test, y_test = x_test[:2000], y_test[:2000]
            scale = 255.0
            name = "fashion_mnist (12000 train / 2000 test)"
        except Exception as e:  # offline, package missing
            if name == "fashion_mnist":
                raise RuntimeError(
                    "Fashion-MNIST is not available: on Debian `apt-get install "
                    "dataset-fashion-mnist` and copy /usr/share/datasets/fashion-mnist/"
                    "*.gz into $KERAS_HOME/datasets/fashion-mnist/ (scripts/dev.py "
                    f"does this), or let Keras download it. ({e})"
                ) from e
            name = "auto"
    if name in ("auto", "digits"):
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.images.astype("float32")
        y = digits.target
        order = np.random.default_rng(0).permutation(len(x))
        x, y = x[order], y[order]
        x_train, y_train, x_test, y_test = x[:1440], y[:1440], x[1440:], y[1440:]
        scale = 16.0
        name = "sklearn digits (1440 train / 357 test)"
    x_train = (x_train[..., None] / scale).astype("float32")
    x_test = (x_test[..., None] / scale).astype("float32")
    return x_train, y_train.astype("int32"), x_test, y_test.astype("int32"), name


def collapsible(factor):
    return kc.CollapsiblePReLU(alpha_regularizer=kc.LinearityRegularizer(factor))


def inverted_residual(x, channels, expansion, factor, stride=1):
    inputs = x
    x = keras.layers.Conv2D(channels * expansion, 1, use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = collapsible(factor)(x)
    x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(
        x
    )
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = collapsible(factor)(x)
    x = keras.layers.Conv2D(channels, 1, use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    if stride == 1 and inputs.shape[-1] == channels:
        x = keras.layers.Add()([inputs, x])
    return x


def build_model(input_shape, factor):
    inputs = keras.Input(input_shape)
    stride = 2 if input_shape[0] > 16 else 1
    x = keras.layers.Conv2D(16, 3, strides=stride, padding="same", use_bias=False)(
        inputs
    )
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = inverted_residual(x, 16, 4, factor)
    x = inverted_residual(x, 16, 4, factor)
    x = inverted_residual(x, 24, 4, factor, stride=2)
    x = inverted_residual(x, 24, 4, factor)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(64)(x)
    x = collapsible(factor)(x)
    x = keras.layers.Dropout(0.1)(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="mobile_cnn")


def accuracy(model, x, y):
    probabilities = keras.ops.convert_to_numpy(
        model.predict(x, batch_size=256, verbose=0)
    )
    return float(np.mean(np.argmax(probabilities, axis=-1) == y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", choices=["auto", "digits", "fashion_mnist"], default="digits"
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--factor",
        type=float,
        default=2.0,
        help="LinearityRegularizer factor per activation",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="|alpha - 1| below which an activation is locked linear",
    )
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test, data_name = load_data(args.dataset)
    print(f"backend {keras.backend.backend()}, data: {data_name}")
    model = build_model(x_train.shape[1:], args.factor)
    steps = args.epochs * -(-len(x_train) // 32)
    # Decaying to zero settles BatchNorm statistics and the alphas at the end.
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.time()
    model.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=32,
        verbose=2,
        validation_data=(x_test, y_test),
    )
    print(f"trained {args.epochs} epochs in {time.time() - start:.0f}s")
    trained_accuracy = accuracy(model, x_test, y_test)

    alphas = [
        float(np.mean(layer.alpha_numpy())) for layer in kc.collapsible_layers(model)
    ]
    print("alphas after training:", " ".join(f"{a:.2f}" for a in alphas))
    locked = kc.lock_near_linear(model, tolerance=args.tolerance)
    print(
        f"locked {len(locked)} of {len(alphas)} collapsible activations as the identity"
    )
    locked_accuracy = accuracy(model, x_test, y_test)

    small, report = kc.surgery(model, return_report=True)
    small_accuracy = accuracy(small, x_test, y_test)
    report.measure_latency(batch_sizes=(1, 64), repeats=20)
    print()
    print(report)
    print()
    print(
        f"test accuracy: trained {trained_accuracy:.4f} | alphas snapped to 1 "
        f"{locked_accuracy:.4f} | collapsed model {small_accuracy:.4f}"
    )
    path = os.path.join(tempfile.mkdtemp(), "small.keras")
    small.save(path)
    print(f"saved the collapsed model to {path}")


if __name__ == "__main__":
    main()
