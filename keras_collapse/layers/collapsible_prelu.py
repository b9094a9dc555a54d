"""The ReLU/PReLU drop-in of LayerCollapse."""

import keras

from keras_collapse.layers.collapsible_activation import CollapsibleActivation


@keras.saving.register_keras_serializable(package="keras_collapse")
class CollapsiblePReLU(CollapsibleActivation):
    """A PReLU whose slope a regularizer pulls toward 1 (the identity).

    `y = max(0, x) + alpha * min(0, x)`: `alpha = 0` is exactly ReLU,
    `alpha = 1` exactly the identity. A drop-in for `keras.layers.ReLU` and
    `keras.layers.PReLU`; it is `CollapsibleActivation("relu")`, with the same
    locking and the same `alpha` contract.

    Args:
        alpha_initializer: initializer of `alpha`. Defaults to `"zeros"` (ReLU).
        alpha_regularizer: regularizer of `alpha`; `"linearity"` attaches
            `LinearityRegularizer()` (the LayerCollapse pull toward 1), None
            none. Defaults to `None`.
        alpha_constraint: constraint of `alpha`. Defaults to `None`.
        trainable_alpha: None (trained when a regularizer pulls it, frozen
            otherwise), True (trained as a PReLU's slope) or False. Defaults
            to `None`.
        shared_axes: `"all"` (one scalar alpha), `None` (one per element, as
            Keras' `PReLU`), or the axes to share along. Defaults to `"all"`.
        alpha_scale: the slope's own learning-rate scale (see
            `CollapsibleActivation`). Defaults to `None`: 1, or 32 with a
            regularizer.
        alpha_range: `(low, high)` bounds of `alpha`, None or "auto" (`(0, 1)`
            with a regularizer). Defaults to `"auto"`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Example:

    >>> x = keras.ops.convert_to_tensor([-2.0, 3.0])
    >>> layer = kc.CollapsiblePReLU(alpha_initializer=keras.initializers.Constant(0.5))
    >>> keras.ops.convert_to_numpy(layer(x)).tolist()  # [0.5 * -2, 3]
    [-1.0, 3.0]

    Reference:
        LayerCollapse, arXiv 2311.17943.
    """

    def __init__(
        self,
        alpha_initializer="zeros",
        alpha_regularizer=None,
        alpha_constraint=None,
        trainable_alpha=None,
        shared_axes="all",
        alpha_scale=None,
        alpha_range="auto",
        **kwargs,
    ):
        super().__init__(
            activation="relu",
            alpha_initializer=alpha_initializer,
            alpha_regularizer=alpha_regularizer,
            alpha_constraint=alpha_constraint,
            trainable_alpha=trainable_alpha,
            shared_axes=shared_axes,
            alpha_scale=alpha_scale,
            alpha_range=alpha_range,
            **kwargs,
        )

    def get_config(self):
        config = super().get_config()
        del config["activation"], config["activation_kwargs"]
        return config
