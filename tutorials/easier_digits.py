"""
Title: EASIER: linearizing the activations whose ON/OFF states carry least
Author: keras_collapse
Description: Measure each activation's ON/OFF entropy over data, let
EASIERCallback linearize the lowest-entropy ones while a CNN trains,
re-estimate BatchNorm statistics, and merge with `surgery`.
"""

"""
## Setup

EASIER (arXiv 2404.18949) looks at the pre-activation z of every neuron over
data: a channel that is ON (z > 0) on every sample, or OFF on every sample,
is linear there. The binary entropy of its ON frequency, averaged over a
layer's channels, is 0 for a layer that is linear on the data and 1 bit for
a layer of coin tosses. The lowest-entropy layer is the cheapest to
linearize.
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
## A small CNN with collapsible activations

`CollapsiblePReLU()` is ReLU until something linearizes it; it adds no pull
of its own (pass `alpha_regularizer="linearity"` for LayerCollapse's).
"""

inputs = keras.Input((8, 8, 1))
h = inputs
for filters in (16, 32, 32, 32):
    h = keras.layers.Conv2D(filters, 3, padding="same")(h)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    h = kc.CollapsiblePReLU()(h)
h = keras.layers.GlobalAveragePooling2D()(h)
model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=32, epochs=6, verbose=0)
print("trained, test accuracy:", model.evaluate(x_test, y_test, verbose=0)[1])

"""
## The entropy of every activation, in one pass

`activation_statistics` runs the model's layers once over the data and
returns, per activation and channel, the fraction of ON values, the mean and
the standard deviation of the pre-activation; per layer, the entropy.
"""

stats = kc.activation_statistics(model, x_train)
print(stats)
print("lowest entropy:", stats.candidates()[0].name)

"""
## Linearize during fit

Every 2 epochs the callback re-estimates the BatchNorm statistics on its
sample, judges the last change against the accuracy on a fixed validation
sample (rolling it back if it cost more than 2 points), and eases the next
lowest-entropy activation into the identity over one epoch. Channels never
ON in the sample are zeroed at their BatchNorm, so surgery cuts them.
"""

easier = kc.EASIERCallback(data=x_train, validation_data=(x_val, y_val), verbose=1)
model.fit(x_train, y_train, batch_size=32, epochs=9, verbose=0, callbacks=[easier])
print("linearized:", easier.linearized, "kept:", easier.kept)
accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
print("after EASIER, test accuracy:", accuracy)

"""
## Surgery

The callback re-estimated the BatchNorm statistics at the end of training,
so the folded convs carry settled statistics. The result is checked against
the model on random inputs, and classifies the test set exactly as it does.
"""

small, report = kc.surgery(model, return_report=True)
print(report.summary())
small.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
collapsed = small.evaluate(x_test, y_test, verbose=0)[1]
print("collapsed, test accuracy:", collapsed)
assert np.isclose(collapsed, accuracy)
