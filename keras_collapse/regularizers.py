"""The LayerCollapse regularizer: a penalty that pulls slopes toward linearity."""

import keras
from keras import ops

from keras_collapse.checks import check_number


@keras.saving.register_keras_serializable(package="keras_collapse")
class LinearityRegularizer(keras.regularizers.Regularizer):
    """Pulls a collapsible activation's `alpha` toward 1 (the identity).

    `loss = factor * sum((1 - alpha) ** 2)`

    At `alpha = 1` the activation is linear and the layers on both sides of it
    can be merged into one by `keras_collapse.surgery`.

    Args:
        factor: float, the strength of the pull. Reference values from the
            LayerCollapse paper: 0.2 (VGG on CIFAR from scratch), 1 (ViT
            fine-tune), 10 (BERT). Defaults to `0.2`.

    Example:

    >>> reg = kc.LinearityRegularizer(factor=0.5)
    >>> # 0.5 * ((1 - 0)^2 + (1 - 1)^2 + (1 - 0.5)^2) = 0.5 * 1.25
    >>> float(reg(keras.ops.convert_to_tensor([0.0, 1.0, 0.5])))
    0.625

    Reference:
        LayerCollapse, arXiv 2311.17943.
    """

    def __init__(self, factor=0.2):
        self.factor = check_number("factor", factor, low=0, what="the pull")

    def __call__(self, x):
        return self.factor * ops.sum(ops.square(1.0 - x))

    def get_config(self):
        return {"factor": self.factor}
