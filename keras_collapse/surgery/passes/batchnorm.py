"""Folding inference-mode BatchNormalization into an adjacent Conv/Dense."""

import keras

from keras_collapse import algebra
from keras_collapse.graph import Ref
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite


def fold_batchnorms(graph, journal):
    """Folds each BatchNormalization into the linear layer before it, or,
    where there is none, into the one after it when that is exact.

    After a Conv/Depthwise/Dense (linear activation, read by the BN alone) the
    fold is exact for any padding. Before one, only into a Dense, a "valid"
    conv or a 1x1 conv: with "same" padding the conv would see the BN's shift
    where the original saw padded zeros.

    Returns:
        int, the number of BatchNormalization layers folded.
    """
    folded = 0
    for bn in graph.layer_nodes():
        if not kinds.is_batchnorm(bn.layer) or bn.id not in graph.nodes:
            continue
        reason = _unfoldable(bn)
        if reason:
            journal.skip("fold_bn", [bn.layer.name], reason)
            continue
        try:
            scale, shift = algebra.batchnorm_affine(*_bn_arrays(bn.layer))
        except ValueError as e:
            journal.skip("fold_bn", [bn.layer.name], f"kept: {e}")
            continue
        readers = rewrite.readers(graph)
        source = graph.producer(bn.input_refs[0])
        target = None
        if _can_fold_after(source, readers) and graph.has_finite_weights(source):
            kernel, bias = rewrite.kernel_and_bias(source)
            kernel, bias = algebra.fold_affine_after(
                kernel, bias, scale, shift, depthwise=kinds.is_depthwise(source.layer)
            )
            target = source
        else:
            after = readers.sole(Ref(bn.id))
            if (
                after is not None
                and _can_fold_before(after)
                and graph.has_finite_weights(after)
            ):
                target = after
                kernel, bias = rewrite.kernel_and_bias(target)
                kernel, bias = algebra.fold_affine_before(
                    kernel,
                    bias,
                    scale,
                    shift,
                    depthwise=kinds.is_depthwise(target.layer),
                )
        if target is None:
            journal.skip(
                "fold_bn",
                [bn.layer.name],
                "no Conv/Dense to fold into exactly (kept as an affine layer)",
            )
            continue
        rewrite.set_kernel_and_bias(graph, target, kernel, bias)
        graph.bypass(bn)
        journal.did("fold_bn", [bn.layer.name, target.layer.name], "exact")
        folded += 1
    return folded


def _bn_arrays(layer):
    def value(variable):
        return None if variable is None else keras.ops.convert_to_numpy(variable)

    return (
        value(layer.gamma if layer.scale else None),
        value(layer.beta if layer.center else None),
        value(layer.moving_mean),
        value(layer.moving_variance),
        layer.epsilon,
    )


def _unfoldable(bn):
    if bn.kwargs.get("training") is True:
        return "called with training=True"
    rank = len(bn.shape)
    if bn.layer.axis not in (-1, rank - 1):
        return f"normalizes axis {bn.layer.axis}, not the channel axis (last)"
    if len(bn.input_refs) != 1:
        return "has more than one input"
    return None


def _can_fold_after(source, readers):
    return (
        not source.is_input
        and kinds.is_linear_op(source.layer)
        and len(source.shapes) == 1
        and readers.has_one(Ref(source.id))
    )


def _can_fold_before(target):
    layer = target.layer
    # The affine acts on the input: a fused activation after the layer is fine.
    if not (kinds.is_conv(layer) or kinds.is_depthwise(layer) or kinds.is_dense(layer)):
        return False
    if len(target.input_refs) != 1:
        return False
    if kinds.is_dense(layer):
        return True
    pointwise = all(k == 1 for k in layer.kernel_size)
    return layer.padding == "valid" or pointwise
