"""
Title: LayerCollapse on an MLP: pulling activations to the identity
Author: keras_collapse
Description: Train an MLP whose ReLUs are CollapsiblePReLUs and watch the
LinearityRegularizer pull their slopes toward 1.
"""

"""
## Setup

`CollapsiblePReLU` is a drop-in for `keras.layers.ReLU`: it computes
`max(0, x) + alpha * min(0, x)`, starts at `alpha = 0` (ReLU) and by default
carries a `LinearityRegularizer`, which adds `factor * (1 - alpha)^2` to the
loss. When `alpha` reaches 1 the activation is the identity, and the two
Dense layers around it compute one linear map.
"""

import keras
import numpy as np
from sklearn.datasets import load_digits

import keras_collapse as kc

keras.utils.set_random_seed(0)
digits = load_digits()
x = (digits.data / 16.0).astype("float32")
y = digits.target
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

"""
## A model with collapsible activations

The first activation gets a strong pull (factor 2), the second none: only the
first is meant to collapse.
"""

inputs = keras.Input((64,))
h = keras.layers.Dense(64)(inputs)
h = kc.CollapsiblePReLU(alpha_regularizer=kc.LinearityRegularizer(2.0), name="pulled")(
    h
)
h = keras.layers.Dense(64)(h)
h = kc.CollapsiblePReLU(alpha_regularizer=None, name="free")(h)
outputs = keras.layers.Dense(10, activation="softmax")(h)
model = keras.Model(inputs, outputs)
model.compile(
    optimizer=keras.optimizers.Adam(5e-3),
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy"],
)
model.fit(x_train, y_train, epochs=20, batch_size=64, verbose=0)

"""
## Reading the slopes

`kc.collapsible_layers` lists the collapsible activations in graph order.
"""

for layer in kc.collapsible_layers(model):
    print(f"{layer.name}: alpha = {float(layer.alpha_numpy()):.3f}")
_, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"test accuracy: {accuracy:.3f}")

"""
## Locking a slope at exactly 1

Close to 1 is not linear. `kc.lock_linear` snaps `alpha` to 1 and locks it:
the layer computes exactly `y = x` from now on, even if training continues.
`keras_collapse.surgery` can then merge the two Dense layers around it.
"""

pulled = model.get_layer("pulled")
assert abs(1.0 - float(pulled.alpha_numpy())) < 0.05, pulled.alpha_numpy()
kc.lock_linear(model, "pulled")
model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
probe = np.linspace(-3, 3, 64, dtype="float32")[None]
assert np.array_equal(keras.ops.convert_to_numpy(pulled(probe)), probe)
_, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"after locking and 2 more epochs: test accuracy {accuracy:.3f}")
