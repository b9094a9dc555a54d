"""Emitting patterns a backend compiles wrongly in a form it computes right.

TensorFlow 2.21 with oneDNN (its default on x86 CPUs) fuses
`Conv2D/Conv3D -> BiasAdd -> Add -> LeakyRelu` into one kernel that applies a
negative slope of 0.2 whatever the layer asks for: `predict`, a traced
function and an exported SavedModel are wrong, eager calls are right. Folding
a BatchNormalization into the conv before a residual `Add` creates exactly
that pattern. `max(x, slope * x)` (`min` for a slope above 1) is the same
function, bit for bit, with ops the fusion does not match (a `PReLU` is
matched by another fusion that fails with a logged error).
"""

import keras

from keras_collapse.graph import Ref
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite

_CONV_FAMILY = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)


def use_safe_forms(graph, journal):
    """Replaces each leaky ReLU that reads an `Add` of a convolution by
    `Maximum()([x, Rescaling(slope)(x)])` (`Minimum` if slope > 1).

    Returns:
        int, the number of layers replaced.
    """
    replaced = 0
    for node in graph.layer_nodes():
        slope = _leaky_slope(node.layer)
        if slope is None or len(node.input_refs) != 1:
            continue
        (x,) = node.input_refs
        source = graph.producer(x)
        if source.is_input or type(source.layer) is not keras.layers.Add:
            continue
        if not any(
            isinstance(graph.producer(ref).layer, _CONV_FAMILY)
            for ref in source.input_refs
        ):
            continue
        old = node.layer.name
        dtype = getattr(node.layer, "dtype_policy", None)
        scaled = graph.add(
            keras.layers.Rescaling(
                slope, dtype=dtype, name=rewrite.unique_name(graph, old + "_slope")
            ),
            (x,),
            shapes=node.shapes,
            dtypes=node.dtypes,
        )
        pick = keras.layers.Maximum if slope <= 1 else keras.layers.Minimum
        name = rewrite.replacement_name(graph, node)
        rewrite.set_layer(
            graph, node, pick(dtype=dtype, name=name), args=([x, Ref(scaled.id)],)
        )
        journal.did(
            "safe_form",
            [old],
            f"leaky ReLU after conv + Add as {pick.__name__.lower()}(x, "
            f"{slope:g} * x): TensorFlow's oneDNN fusion computes the former "
            "with a wrong slope",
        )
        replaced += 1
    return replaced


def _leaky_slope(layer):
    """The negative slope of a layer or op that computes a leaky ReLU."""
    if type(layer) is keras.layers.LeakyReLU:
        return float(layer.negative_slope)
    if type(layer) is keras.layers.ReLU:
        plain = layer.max_value is None and not layer.threshold
        return float(layer.negative_slope) if plain and layer.negative_slope else None
    if type(layer) is keras.layers.Activation:
        if kinds.activation_name(layer.activation) == "leaky_relu":
            return 0.2  # keras.activations.leaky_relu's default
        return None
    if type(layer).__name__ == "LeakyRelu" and not isinstance(
        layer, keras.layers.Layer
    ):
        return float(getattr(layer, "negative_slope", 0.2))
    return None
