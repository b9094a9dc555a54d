"""A per-position bias: what an exact 1x1 -> k x k "same" merge leaves over."""

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="keras_collapse")
class BiasMap(keras.layers.Layer):
    """Adds a fixed-shape bias tensor to every sample: `y = x + bias_map`.

    Merging a 1x1 conv that has a bias into a following k x k conv with "same"
    zero padding is exact only if the bias the second conv sees is allowed to
    differ at the image border (where it saw padded zeros instead of the first
    conv's bias). `keras_collapse.surgery` puts that border-aware bias here,
    after the merged conv. It needs the input's spatial size to be static.

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
