"""A per-position bias: what an exact 1x1 -> k x k "same" merge leaves over.

`surgery` emits it as a plain `keras.layers.Rescaling(1.0, offset=map)`, so
the result loads with Keras alone; `BiasMap`, the layer earlier versions
emitted, still loads (and is read by the passes) for files saved by them.
"""

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="keras_collapse")
class BiasMap(keras.layers.Layer):
    """Adds a fixed-shape bias tensor to every sample: `y = x + bias_map`.

    Merging a 1x1 conv that has a bias into a following k x k conv with "same"
    zero padding is exact only if the bias the second conv sees is allowed to
    differ at the image border (where it saw padded zeros instead of the first
    conv's bias). Earlier versions of `keras_collapse.surgery` put that
    border-aware bias here, after the merged conv; now they emit the plain
    `bias_map_layer`. It needs the input's spatial size to be static.

    Args:
        shape: tuple of ints, the shape of the map (without the batch axis),
            e.g. `(height, width, channels)`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.
    """

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        shape = tuple(shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(
                f"`shape` must be a tuple of positive ints. Received: shape={shape}"
            )
        self.shape = shape

    def build(self, input_shape):
        if tuple(input_shape[1:]) != self.shape:
            raise ValueError(
                f"BiasMap '{self.name}' holds a map of shape {self.shape}; expected "
                f"inputs of shape (batch, *{self.shape}). Received: {input_shape}"
            )
        self.bias_map = self.add_weight(
            shape=self.shape, name="bias_map", initializer="zeros"
        )

    def call(self, inputs):
        return inputs + self.bias_map

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "shape": list(self.shape)}


def is_uniform(bias_map):
    """Whether a map is the same vector at every position (a plain bias)."""
    flat = np.reshape(bias_map, (-1, bias_map.shape[-1]))
    return bool(np.all(flat == flat[:1]))


def bias_map_layer(bias_map, dtype=None, name=None):
    """A plain Keras layer adding `bias_map` to every sample: a `Rescaling`
    with scale 1 and the map as its offset (`1 * x + map` is exactly
    `x + map`). The map is a constant of the layer's config, not a weight."""
    return keras.layers.Rescaling(
        1.0, offset=np.asarray(bias_map, dtype="float32"), dtype=dtype, name=name
    )


def map_of(layer):
    """The float64 map a bias-map layer (`is_bias_map`) adds."""
    if type(layer) is keras.layers.Rescaling:
        return np.asarray(layer.offset, dtype="float64")
    return np.asarray(layer.get_weights()[0], dtype="float64")


def is_bias_map(layer):
    """Whether a layer only adds a per-position map (`BiasMap`, or a
    `Rescaling` by 1 with an array offset)."""
    if type(layer) is BiasMap:
        return True
    return (
        type(layer) is keras.layers.Rescaling
        and np.ndim(layer.scale) == 0
        and float(layer.scale) == 1.0
        and np.ndim(layer.offset) >= 2
    )
