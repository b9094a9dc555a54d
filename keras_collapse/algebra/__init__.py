"""Pure-NumPy weight algebra: fold affine maps, compose layers, count costs.

Backend-free: works on kernels pulled out of a model with `get_weights()` and
returns float64 arrays for `set_weights()` (after casting).
"""

from keras_collapse.algebra.compose import add_identity_shortcut
from keras_collapse.algebra.compose import add_pointwise_shortcut
from keras_collapse.algebra.compose import compose_conv
from keras_collapse.algebra.compose import compose_dense
from keras_collapse.algebra.compose import compose_depthwise_pointwise
from keras_collapse.algebra.compose import compose_pointwise_depthwise
from keras_collapse.algebra.compose import pad_kernel_to
from keras_collapse.algebra.compose import same_padding_bias_map
from keras_collapse.algebra.cost import attention_macs
from keras_collapse.algebra.cost import conv_macs
from keras_collapse.algebra.cost import conv_output_shape
from keras_collapse.algebra.cost import conv_params
from keras_collapse.algebra.cost import dense_macs
from keras_collapse.algebra.cost import dense_params
from keras_collapse.algebra.cost import einsum_macs
from keras_collapse.algebra.fold import batchnorm_affine
from keras_collapse.algebra.fold import fold_affine_after
from keras_collapse.algebra.fold import fold_affine_before

__all__ = [
    "add_identity_shortcut",
    "attention_macs",
    "add_pointwise_shortcut",
    "batchnorm_affine",
    "compose_conv",
    "compose_dense",
    "compose_depthwise_pointwise",
    "compose_pointwise_depthwise",
    "conv_macs",
    "conv_output_shape",
    "conv_params",
    "dense_macs",
    "dense_params",
    "einsum_macs",
    "fold_affine_after",
    "fold_affine_before",
    "pad_kernel_to",
    "same_padding_bias_map",
]
