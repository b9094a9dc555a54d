"""Unrollers for keras-hub layers that tracing cannot read, registered by
class path (`unroll.register_unroller`): nothing here imports keras-hub.

Each returns the layer's outputs computed with its own sublayers and plain
Keras layers and ops, so the result loads with Keras (and keras-hub for the
keras-hub layers it still holds). Pinned by
tests/integration/test_keras_hub_unroll.py.
"""

import keras


def vit_patching_and_embedding(layer, images):
    """keras-hub's `ViTPatchingAndEmbedding`: patches by its own Conv2D, the
    class token (a weight of the layer itself) as a one-row `Embedding`
    holding a copy of it, positions by its own `Embedding` on ids counted
    from the patches (its call looks them up on a constant, which a trace
    would bake in)."""
    ops = keras.ops
    hidden = layer.hidden_dim
    x = layer.patch_embedding(images)
    if layer.data_format == "channels_first":
        x = keras.layers.Permute((2, 3, 1), name=f"{layer.name}_channels_last")(x)
    x = keras.layers.Reshape((-1, hidden), name=f"{layer.name}_patches")(x)
    if layer.use_class_token:
        ids = ops.cast(ops.zeros_like(x[:, :1, 0]), "int32")
        token = keras.layers.Embedding(
            1, hidden, dtype=layer.dtype_policy, name=f"{layer.name}_class_token"
        )
        tokens = token(ids)
        token.set_weights([keras.ops.convert_to_numpy(layer.class_token)[0]])
        x = keras.layers.Concatenate(axis=1, name=f"{layer.name}_tokens")([tokens, x])
    positions = ops.cumsum(ops.ones_like(x[..., 0], dtype="int32"), axis=1) - 1
    return ops.add(x, layer.position_embedding(positions))


UNROLLERS = {
    "keras_hub.src.models.vit.vit_layers.ViTPatchingAndEmbedding": (
        vit_patching_and_embedding
    ),
}
