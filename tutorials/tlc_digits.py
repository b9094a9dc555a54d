"""
Title: Till the Layers Collapse: removing activations during fit
Author: keras_collapse
Description: Read BatchNorm's ON/OFF statistics, let TLCCallback linearize
activations while a CNN trains, and merge them away with `surgery`.
"""

"""
## Setup

TLC (arXiv 2412.15077) reads a BatchNormalization as a Gaussian model of the
pre-activation that follows it: channel c is `z ~ N(beta_c, gamma_c^2)`.
A channel that is almost always ON can pass through (the ReLU is the
identity there); one almost always OFF can be removed. A layer whose
channels are all one or the other can be linearized, and then merged with
its neighbours.
"""

import keras
import numpy as np
from sklearn.datasets import load_digits

import keras_collapse as kc

keras.utils.set_random_seed(0)
digits = load_digits()
x = (digits.images / 16.0).astype("float32")[..., None]
y = digits.target
x_train, y_train = x[:1200], y[:1200]
x_val, y_val = x[1200:1500], y[1200:1500]
x_test, y_test = x[1500:], y[1500:]

"""
## A small CNN with BatchNormalization

Written with plain ReLUs; `make_collapsible` turns each into a collapsible
activation that computes exactly the same function until it is linearized.
BatchNormalization's momentum is 0.9: the default 0.99 leaves the moving
statistics unconverged after a short training.
"""


def conv_bn_relu(h, filters, kernel):
    h = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False)(h)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    return keras.layers.ReLU()(h)


inputs = keras.Input((8, 8, 1))
h = conv_bn_relu(inputs, 16, 3)
h = conv_bn_relu(h, 32, 1)
h = conv_bn_relu(h, 32, 3)
h = conv_bn_relu(h, 32, 1)
h = keras.layers.GlobalAveragePooling2D()(h)
model = kc.make_collapsible(keras.Model(inputs, keras.layers.Dense(10)(h)))
model.compile(
    keras.optimizers.Adam(3e-3),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(x_train, y_train, batch_size=64, epochs=10, verbose=0)
print("trained, test accuracy:", model.evaluate(x_test, y_test, verbose=0)[1])

"""
## What the BatchNorms say

One row per activation: the fraction of its channels that are surely ON,
surely OFF, or uncertain, and a score (the expected error of forcing every
channel to its likelier state, relative to the channel's size; lower is
safer). `analysis.plot()` draws the same with matplotlib.
"""

analysis = kc.analyze_batchnorm(model)
print(analysis)

"""
## Linearize during fit

With `validation_data`, TLCCallback measures on a fixed sample how much the
loss rises when each candidate is linearized, linearizes the least harmful
one every `interval` epochs, and rolls back any that costs more than
`tolerance` of accuracy. Without it (`kc.TLCCallback()`), the ranking comes
from the BN scores alone and the guard from the training metrics.
"""

tlc = kc.TLCCallback(validation_data=(x_val, y_val), tolerance=0.02, verbose=1)
history = model.fit(
    x_train, y_train, batch_size=64, epochs=9, verbose=0, callbacks=[tlc]
)
print("linearized:", tlc.linearized, "kept:", tlc.kept)
print("linearized per epoch:", history.history["tlc_linearized"])
accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
print("after TLC, test accuracy:", accuracy)

"""
## Surgery

The linearized activations disappear, their OFF channels (zeroed at the BN)
are cut from the convs on both sides, and linear runs merge where that is
exact and cheaper. The result is checked against the model on random inputs.
"""

small, report = kc.surgery(model, return_report=True)
print(report.summary())
small.compile(
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
collapsed = small.evaluate(x_test, y_test, verbose=0)[1]
print("collapsed, test accuracy:", collapsed)
assert np.isclose(collapsed, accuracy)
