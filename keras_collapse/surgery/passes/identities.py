"""Removing layers that are the identity at inference."""

import keras

from keras_collapse.graph import Ref
from keras_collapse.graph import kinds


def remove_identities(graph, journal):
    """Drops Dropout and friends, `Identity`, `Activation("linear")` and
    collapsible activations that are linear (alpha = 1 or locked).

    Returns:
        int, the number of nodes removed.
    """
    removed = 0
    for node in graph.layer_nodes():
        if not kinds.is_identity_at_inference(node) or len(node.input_refs) != 1:
            continue
        source = node.input_refs[0]
        if _casts(graph, node, source):
            # e.g. the float32 `Activation("linear")` ending a mixed-precision
            # model: dropping it would change the output dtype.
            continue
        is_output = Ref(node.id) in keras.tree.flatten(graph.outputs)
        if is_output and graph.producer(source).is_input:
            # Keras cannot build a model whose output is one of its inputs.
            journal.skip(
                "remove_identity",
                [node.layer.name],
                "it maps a model input straight to a model output",
            )
            continue
        kind = "linear" if kinds.is_collapsible(node.layer) else "identity"
        graph.bypass(node)
        journal.did("remove_identity", [node.layer.name], f"{kind} at inference")
        removed += 1
    return removed


def _casts(graph, node, source):
    """Whether `node` changes the dtype of what it reads (a cast)."""
    before = graph.producer(source).dtypes[source.index]
    return keras.backend.standardize_dtype(before) != keras.backend.standardize_dtype(
        node.dtypes[0]
    )
