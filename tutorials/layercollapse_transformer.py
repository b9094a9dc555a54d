"""
Title: LayerCollapse on a transformer: merging the deepest MLPs
Author: keras_collapse
Description: Build an encoder-only transformer from keras-hub
TransformerEncoder layers, pull the GELUs of its deepest MLPs to the identity
while it trains, and merge each collapsed MLP's two Dense layers into one
with `surgery`.
"""

"""
## Setup

Every transformer block ends in an MLP: `fc1 -> GELU -> fc2`. When the GELU
is the identity, `fc2(fc1(x))` is one linear map, and the two Dense layers
(here 64 -> 128 -> 64) become one Dense (64 -> 64): fewer parameters, fewer
MACs, one layer less on every path. LayerCollapse (arXiv 2311.17943) gets
there by blending the activation with the identity,
`alpha * x + (1 - alpha) * gelu(x)`, and pulling `alpha` toward 1 with a
regularizer while the model trains. It collapses the deepest MLPs first:
the early blocks keep their nonlinearity.

The data are Fashion-MNIST images read row by row: 28 tokens of 28 pixels.
Offline, Keras finds the files in `$KERAS_HOME/datasets/fashion-mnist/`
(`python3 scripts/dev.py run` puts them there from the Debian package
`dataset-fashion-mnist`); without them the tutorial falls back to
scikit-learn's digits, 8 tokens of 8 pixels. The full size trains two
4-block transformers on 10,000 images, 3-4 minutes on 2 CPU cores;
`KC_TUTORIAL_SIZE=small` (what the tests set) trains 2-block ones on 1,600.
"""

import math
import os
import tempfile

import keras
import keras_hub
import numpy as np

import keras_collapse as kc

SIZE = os.environ.get("KC_TUTORIAL_SIZE", "full")
if SIZE not in ("full", "small"):
    raise ValueError(f"KC_TUTORIAL_SIZE must be 'full' or 'small', not {SIZE!r}")
if SIZE == "small":
    TRAIN, TEST, BATCH, STEPS, LEARNING_RATE = 1600, 500, 16, 400, 5e-3
    ENCODERS, HIDDEN, MLP, HEADS = 2, 32, 64, 2
else:
    TRAIN, TEST, BATCH, STEPS, LEARNING_RATE = 10000, 2000, 32, 1800, 2e-3
    ENCODERS, HIDDEN, MLP, HEADS = 4, 64, 128, 4
FACTOR = 2.0  # the LinearityRegularizer's factor

keras.utils.set_random_seed(0)
try:
    (x, y), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    dataset = "Fashion-MNIST"
    x, x_test = (x / 255.0).astype("float32"), (x_test / 255.0).astype("float32")
except Exception as error:  # offline, without the files
    from sklearn.datasets import load_digits

    print(f"Fashion-MNIST is not available ({type(error).__name__}): using digits")
    dataset = "digits"
    digits = load_digits()
    x, y = (digits.images / 16.0).astype("float32"), digits.target
    x, y, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
x_train, y_train = x[:TRAIN], y[:TRAIN]
x_test, y_test = x_test[:TEST], y_test[:TEST]
TOKENS, FEATURES = x_train.shape[1:]
EPOCHS = math.ceil(STEPS / math.ceil(len(x_train) / BATCH))  # before locking
print(
    f"{dataset}: {len(x_train)} training and {len(x_test)} test images, "
    f"{TOKENS} tokens of {FEATURES} features each; {EPOCHS} epochs"
)

"""
## An encoder-only transformer

Each row of pixels is a token: a Dense embeds it, a learned position
embedding is added, `ENCODERS` keras-hub `TransformerEncoder` blocks follow,
and the tokens are averaged into a Dense classifier. Every block holds an
attention and an MLP `fc1 -> GELU -> fc2`.
"""


def build_transformer():
    inputs = keras.Input((TOKENS, FEATURES))
    h = keras.layers.Dense(HIDDEN, name="token_embedding")(inputs)
    positions = keras_hub.layers.PositionEmbedding(TOKENS, name="positions")(h)
    h = keras.layers.Add()([h, positions])
    for i in range(ENCODERS):
        h = keras_hub.layers.TransformerEncoder(
            MLP, HEADS, dropout=0.1, activation="gelu", name=f"encoder_{i}"
        )(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="classifier")(h))


transformer = build_transformer()

"""
## Collapsible GELUs in the deepest half of the blocks

`make_collapsible` sees inside keras-hub's composite layers: it traces each
`TransformerEncoder`'s `call`, and the new model is a plain functional model
whose layers are named `<block>_<sublayer>`. `activations=["gelu"]` picks
the MLPs' GELUs (not the softmax of the attention), `fraction=0.5` keeps the
deepest half of them. They start at `alpha = 0`: the new model computes
exactly what the transformer computes.

The control is the same conversion without the pull: its `alpha`s are free
to train like any other weight. Both start from the same weights and train
on the same batches for the same epochs.
"""

model = kc.make_collapsible(
    transformer,
    activations=["gelu"],
    alpha_regularizer=kc.LinearityRegularizer(FACTOR),
    fraction=0.5,
)
control = kc.make_collapsible(transformer, activations=["gelu"], fraction=0.5)
print("collapsible:", [layer.name for layer in kc.collapsible_layers(model)])
probe = x_test[:8]
same = np.abs(keras.ops.convert_to_numpy(model(probe) - transformer(probe))).max()
print(f"largest difference to the transformer at alpha = 0: {same:.1e}")


def train(m, epochs):
    m.fit(x_train, y_train, batch_size=BATCH, epochs=epochs, verbose=0)


def test_accuracy(m):
    logits = m.predict(x_test, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y_test))


def slopes(m):
    return {
        layer.name: round(float(layer.alpha_numpy()), 3)
        for layer in kc.collapsible_layers(m)
    }


"""
## Training with the pull

Adam moves a weight by about its learning rate per step at most, so the
slopes need a few hundred steps to travel from 0 to 1 (hence a budget in
steps, `STEPS`); the regularizer's factor decides where they settle
against the task's own gradient. `lock_near_linear` then snaps every slope
within 0.05 of 1 to exactly 1 and locks it, and one more epoch at a tenth
of the learning rate lets the rest of the network adapt to the exact
identity. The control trains the same epochs on the same shuffles.
"""

for name, m in (("LayerCollapse", model), ("control", control)):
    m.compile(
        keras.optimizers.Adam(LEARNING_RATE),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    keras.utils.set_random_seed(1)
    train(m, EPOCHS)
    print(f"{name}, after {EPOCHS} epochs: alpha = {slopes(m)}")

locked = kc.lock_near_linear(model, tolerance=0.05)
print("locked:", [layer.name for layer in locked])
assert locked, "no slope came within 0.05 of 1: raise STEPS or FACTOR"
for m in (model, control):
    m.optimizer.learning_rate = LEARNING_RATE / 10
    keras.utils.set_random_seed(2)
    train(m, 1)
accuracy, control_accuracy = test_accuracy(model), test_accuracy(control)
print(
    f"test accuracy after {EPOCHS + 1} epochs: LayerCollapse {accuracy:.4f}, "
    f"control {control_accuracy:.4f}"
)

"""
## Surgery

With its GELU locked, an MLP's `fc1` and `fc2` merge into one Dense; the
dropout layers (identities at inference) go too. The result is checked
against the model on `sample_inputs`, images like the test set. The report
counts depth (weight layers on the longest path), params and MACs before
and after; an MLP collapsed is one `merge` entry.
"""

small, report = kc.surgery(model, return_report=True, sample_inputs=x_test[:64])
merges = [entry for entry in report.done if entry.kind == "merge"]
print(report.summary())
for entry in merges:
    print("merged:", ", ".join(entry.layers))
before, after = report.before, report.after
print(f"MLPs collapsed: {len(merges)} of {ENCODERS}")
print(f"depth: {before.depth} -> {after.depth}")
print(f"params: {before.params:,} -> {after.params:,}")
print(f"MACs per sample: {before.macs:,} -> {after.macs:,}")
collapsed = test_accuracy(small)
print(f"test accuracy: model {accuracy:.4f}, surgery result {collapsed:.4f}")
assert np.isclose(collapsed, accuracy)
assert len(merges) == len(locked)

"""
## Shipping it

The result is a plain Keras model: it saves to `.keras` and loads back
without `custom_objects`, computing the same.
"""

with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "collapsed_transformer.keras")
    small.save(path)
    loaded = keras.saving.load_model(path)
    outputs = keras.ops.convert_to_numpy(small(x_test[:64]))
    reloaded = keras.ops.convert_to_numpy(loaded(x_test[:64]))
difference = np.abs(outputs - reloaded).max()
print(f"saved and loaded back: largest difference {difference:.1e}")
assert np.allclose(outputs, reloaded, atol=1e-5)
