"""Absorbing a residual `Add` into the kernel of a linear branch.

`y = conv(x) + x` is one conv whose kernel has a Dirac added at its centre
tap; `y = conv(x) + conv_1x1(x)` one conv with the 1x1 kernel added there.
Both exact for stride 1 with "same" padding (odd kernel), and for Dense.
"""

import keras

from keras_collapse import algebra
from keras_collapse.graph import Ref
from keras_collapse.graph import kinds
from keras_collapse.graph import rewrite
from keras_collapse.layers.bias_map import is_bias_map


def absorb_residuals(graph, journal):
    """Folds each two-input `Add` of a linear branch and an identity or 1x1
    shortcut into the branch's layer. Returns the number of Adds absorbed."""
    absorbed = 0
    for add in graph.layer_nodes():
        if add.id not in graph.nodes or type(add.layer) is not keras.layers.Add:
            continue
        if len(add.input_refs) != 2:
            continue
        readers = rewrite.readers(graph)
        for branch_ref, other_ref in (add.input_refs, add.input_refs[::-1]):
            # A merged branch may end in a bias map: absorb into the conv before it.
            tail = graph.producer(branch_ref)
            if is_bias_map(tail.layer) and readers.has_one(branch_ref):
                branch_ref = tail.input_refs[0]
            else:
                tail = None
            branch = _sole_reader_linear(graph, branch_ref, readers)
            if branch is None or not _centre_tap_ok(branch.layer):
                continue
            x = branch.input_refs[0]
            kernel, bias = rewrite.kernel_and_bias(branch)
            shortcut = None
            if other_ref == x and kernel.shape[-1] == kernel.shape[-2]:
                kernel, bias = algebra.add_identity_shortcut(kernel, bias)
                how = "identity shortcut"
            else:
                shortcut = _sole_reader_linear(graph, other_ref, readers)
                if not _is_pointwise_shortcut(shortcut, x, kernel):
                    continue
                sc_kernel, sc_bias = rewrite.kernel_and_bias(shortcut)
                if kinds.is_dense(branch.layer):
                    kernel, bias = (
                        kernel + sc_kernel.reshape(kernel.shape),
                        bias + sc_bias,
                    )
                else:
                    sc_kernel = sc_kernel.reshape(
                        (1,) * (kernel.ndim - 2) + sc_kernel.shape[-2:]
                    )
                    kernel, bias = algebra.add_pointwise_shortcut(
                        kernel, bias, sc_kernel, sc_bias
                    )
                how = "1x1 shortcut"
            names = [add.layer.name, branch.layer.name]
            if shortcut is not None:
                names.append(shortcut.layer.name)
                rewrite.remove(graph, shortcut)
            rewrite.set_kernel_and_bias(graph, branch, kernel, bias)
            graph.replace_uses(Ref(add.id), Ref((tail or branch).id))
            rewrite.remove(graph, add)
            journal.did("absorb_residual", names, f"{how}, exact")
            absorbed += 1
            break
    return absorbed


def _sole_reader_linear(graph, ref, readers):
    """The producer of `ref` if it is a linear Conv/Dense read only once."""
    node = graph.producer(ref)
    if (
        node.is_input
        or not kinds.is_linear_op(node.layer)
        or kinds.is_depthwise(node.layer)
        or not graph.has_finite_weights(node)
    ):
        return None
    if not readers.has_one(ref) or len(node.input_refs) != 1:
        return None
    return node


def _centre_tap_ok(layer):
    if kinds.is_dense(layer):
        return True
    return (
        layer.padding == "same"
        and all(s == 1 for s in layer.strides)
        and all(k % 2 == 1 for k in layer.kernel_size)
    )


def _is_pointwise_shortcut(shortcut, x, kernel):
    if shortcut is None or shortcut.input_refs[0] != x:
        return False
    layer = shortcut.layer
    if kinds.is_dense(layer):
        return layer.units == kernel.shape[-1]
    return (
        all(k == 1 for k in layer.kernel_size)
        and all(s == 1 for s in layer.strides)
        and layer.filters == kernel.shape[-1]
    )
