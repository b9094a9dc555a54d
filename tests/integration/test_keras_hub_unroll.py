"""keras-hub's composite layers seen from inside: `TransformerEncoder` (BERT
and its kin), the ViT encoder blocks, the MobileNet and EfficientNet blocks,
built from constructor arguments (no presets, nothing downloaded), checked on
real token ids (words of a real text, padded) and real images (digits).

Needs `keras-hub` (installed without its dependencies, plus `regex` and
`tokenizers`). The backbones are large on JAX (`builders.SLOW_ON_JAX`)."""

import re

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.graph import Graph
from keras_collapse.graph.unroll import is_composite
from tests.integration import builders
from tests.testing import TestCase
from tests.testing import require

keras_hub = require("keras_hub", "the keras-hub composite layers")
TOLERANCE = 1e-5


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def flat(outputs):
    if isinstance(outputs, dict):
        outputs = [outputs[k] for k in sorted(outputs)]
    return [numpy(o) for o in keras.tree.flatten(outputs)]


def assert_same(actual, expected, tolerance=TOLERANCE):
    actual, expected = flat(actual), flat(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        scale = max(1.0, float(np.max(np.abs(e))))
        assert float(np.max(np.abs(a - e))) <= tolerance * scale


def sentences(length=12, count=6):
    """Token ids of real sentences (a word vocabulary of the digits data's
    description), padded with 0 to `length`; and their padding masks."""
    from sklearn.datasets import load_digits

    text = load_digits().DESCR.lower()
    words = re.findall(r"[a-z]+", text)
    vocabulary = {w: i + 1 for i, w in enumerate(dict.fromkeys(words))}
    lines = [re.findall(r"[a-z]+", line) for line in text.split(".")]
    lines = [line for line in lines if len(line) >= 3][:count]
    ids = np.zeros((len(lines), length), "int32")
    for i, line in enumerate(lines):
        tokens = [vocabulary[w] for w in line][:length]
        ids[i, : len(tokens)] = tokens
    return ids, ids > 0, len(vocabulary) + 1


def digit_images(size, channels, count=4):
    """Real images: sklearn digits, upsampled to `size` x `size`."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:count] / 16.0
    factor = -(-size // 8)
    big = np.kron(images, np.ones((factor, factor)))[:, :size, :size]
    return np.repeat(big[..., None], channels, axis=-1).astype("float32")


def encoder_model(normalize_first=False, layers=2, hidden=16, seed=0):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((None, hidden), name="tokens")
    mask = keras.Input((None,), dtype="bool", name="padding_mask")
    h = tokens
    for i in range(layers):
        h = keras_hub.layers.TransformerEncoder(
            intermediate_dim=2 * hidden,
            num_heads=2,
            dropout=0.1,
            activation="gelu",
            normalize_first=normalize_first,
            name=f"encoder{i}",
        )(h, padding_mask=mask)
    return keras.Model([tokens, mask], keras.layers.Dense(3, name="head")(h))


def bert(vocabulary):
    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary,
        num_layers=3,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=12,
    )


def vit():
    return keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 1),
        patch_size=8,
        num_layers=3,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )


def mobilenet():
    model = keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[40, 56], [64, 144, 144]],
        stackwise_num_blocks=[2, 3],
        stackwise_num_filters=[[16, 16], [24, 24, 24]],
        stackwise_kernel_size=[[3, 3], [5, 5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1, 1]],
        stackwise_se_ratio=[[None, None], [0.25, 0.25, 0.25]],
        stackwise_activation=[
            ["relu", "relu"],
            ["hard_swish", "hard_swish", "hard_swish"],
            ["hard_swish"],
        ],
        stackwise_padding=[[1, 1], [2, 2, 2]],
        output_num_filters=64,
        input_activation="hard_swish",
        output_activation="hard_swish",
        input_num_filters=16,
        image_shape=(32, 32, 3),
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        squeeze_and_excite=0.5,
        last_layer_filter=48,
    )
    builders.randomize_batchnorms(model, seed=5)
    return model


def efficientnet():
    model = keras_hub.models.EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3, 3, 3],
        stackwise_num_repeats=[1, 2, 1, 2],
        stackwise_input_filters=[8, 8, 16, 16],
        stackwise_output_filters=[8, 16, 16, 24],
        stackwise_expansion_ratios=[1, 4, 4, 4],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.0, 0.25, 0.25],
        stackwise_strides=[1, 2, 1, 2],
        stackwise_block_types=["fused"] * 2 + ["unfused"] * 2,
        stackwise_force_input_filters=[0] * 4,
        stackwise_nores_option=[False] * 4,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        input_shape=(32, 32, 3),
    )
    builders.randomize_batchnorms(model, seed=6)
    return model


def hub_composites(model):
    return {
        layer.name
        for layer in model._flatten_layers(include_self=False)
        if type(layer).__module__.startswith("keras_hub") and is_composite(layer)
    }


class TestTransformerEncoder(TestCase):
    @pytest.mark.parametrize("normalize_first", [False, True])
    def test_unrolled_exactly_with_and_without_padding(self, normalize_first):
        model = encoder_model(normalize_first)
        new = kc.make_collapsible(model)
        names = [layer.name for layer in kc.collapsible_layers(new)]
        assert names == [
            "encoder0_feedforward_intermediate_dense_gelu",
            "encoder1_feedforward_intermediate_dense_gelu",
        ]
        x = self.random_inputs((3, 7, 16))
        padded = np.ones((3, 7), bool)
        padded[0, 4:] = padded[1, 2:] = False
        for mask in (np.ones((3, 7), bool), padded):
            assert_same(new([x, mask]), model([x, mask]))
        # The mask matters: padding changes what unpadded tokens see.
        assert not np.allclose(numpy(new([x, padded])), numpy(new([x, padded[::-1]])))

    def test_attention_mask_and_no_mask(self):
        keras.utils.set_random_seed(1)
        tokens = keras.Input((6, 8))
        attention = keras.Input((6, 6), dtype="bool", name="attention_mask")
        encoder = keras_hub.layers.TransformerEncoder(16, 2, name="enc")
        h = encoder(tokens, attention_mask=attention)
        h = keras_hub.layers.TransformerEncoder(16, 2, name="plain")(h)
        model = keras.Model([tokens, attention], h)
        new = kc.make_collapsible(model)
        assert len(kc.collapsible_layers(new)) == 2
        x = self.random_inputs((2, 6, 8))
        causal = np.tril(np.ones((2, 6, 6), bool))
        assert_same(new([x, causal]), model([x, causal]))

    def test_collapsed_mlp_is_one_dense_k1_k2(self):
        model = encoder_model()
        new = kc.make_collapsible(model, fraction=0.5)
        (deepest,) = kc.collapsible_layers(new)
        assert deepest.name.startswith("encoder1_")
        kc.lock_linear(new, [deepest])
        x = self.random_inputs((2, 7, 16))
        mask = np.ones((2, 7), bool)
        mask[1, 5:] = False
        small, report = kc.surgery(new, return_report=True, sample_inputs=[x, mask])
        assert_same(small([x, mask]), new([x, mask]))
        merges = [e for e in report.done if e.kind == "merge"]
        assert [e.layers for e in merges] == [
            (
                "encoder1_feedforward_intermediate_dense",
                "encoder1_feedforward_output_dense",
            )
        ]
        # NumPy oracle of the merged Dense: K1 @ K2, b1 @ K2 + b2.
        encoder = model.get_layer("encoder1")
        k1, b1 = (numpy(w) for w in encoder._feedforward_intermediate_dense.weights)
        k2, b2 = (numpy(w) for w in encoder._feedforward_output_dense.weights)
        (merged,) = [
            layer
            for layer in small.layers
            if layer.name.startswith("encoder1_feedforward_")
            and isinstance(layer, keras.layers.Dense)
        ]
        kernel, bias = (numpy(w) for w in merged.weights)
        self.assert_close(kernel, k1 @ k2, atol=1e-5)
        self.assert_close(bias, b1 @ k2 + b2, atol=1e-5)
        # 16x32 + 32x16 weights become 16x16 (and the activation's own
        # variables go): params and MACs saved.
        own = sum(int(np.prod(w.shape)) for w in deepest.weights)
        assert report.before.params - report.after.params == (
            16 * 32 + 32 + 32 * 16 + 16 - (16 * 16 + 16) + own
        )
        assert report.after.macs < report.before.macs

    def test_training_mode_keeps_dropout(self):
        model = encoder_model()
        new = kc.make_collapsible(model)
        x = self.random_inputs((2, 7, 16))
        mask = np.ones((2, 7), bool)
        assert not np.allclose(
            numpy(new([x, mask], training=True)), numpy(new([x, mask]))
        )


class TestBackbones(builders.SurgeryTestCase):
    pytestmark = builders.SLOW_ON_JAX

    def test_bert_on_real_token_ids(self, tmp_path):
        ids, mask, vocabulary = sentences()
        backbone = bert(vocabulary)
        inputs = {
            "token_ids": ids,
            "segment_ids": np.zeros_like(ids),
            "padding_mask": mask,
        }
        assert Graph.from_model(backbone).opaque == []
        new = kc.make_collapsible(
            backbone, alpha_regularizer=kc.LinearityRegularizer(1.0)
        )
        found = [layer.name for layer in kc.collapsible_layers(new)]
        assert found == [
            f"transformer_layer_{i}_feedforward_intermediate_dense_gelu"
            for i in range(3)
        ]
        assert_same(new(inputs), backbone(inputs))
        assert new.losses  # the LinearityRegularizer pulls every alpha
        # LayerCollapse: the deepest MLPs first.
        kc.lock_linear(new, kc.collapsible_layers(new)[-2:])
        small, report = kc.surgery(new, return_report=True, sample_inputs=inputs)
        assert report.verification.inputs == "sample"
        assert report.count("merge") == 2
        assert report.after.depth == report.before.depth - 2
        assert report.after.params < report.before.params
        assert_same(small(inputs), new(inputs))
        # The result is a plain functional model; it loads wherever
        # keras-hub is imported (its embeddings are keras-hub layers).
        assert type(small) is keras.Model or type(small).__name__ == "Functional"
        self.assert_loads_without_keras_collapse(
            tmp_path,
            [(small, inputs, small(inputs))],
            imports=["keras_hub"],
        )

    def test_a_task_head_goes_back_on(self):
        ids, mask, vocabulary = sentences()
        new = kc.make_collapsible(bert(vocabulary))
        kc.lock_linear(new, kc.collapsible_layers(new)[-1:])
        small = kc.surgery(new)
        pooled = small.output["pooled_output"]
        classifier = keras.Model(
            small.input, keras.layers.Dense(2, name="logits")(pooled)
        )
        classifier.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
        inputs = {
            "token_ids": ids,
            "segment_ids": np.zeros_like(ids),
            "padding_mask": mask,
        }
        labels = np.arange(len(ids)) % 2
        history = classifier.fit(inputs, labels, epochs=2, verbose=0)
        assert np.isfinite(history.history["loss"]).all()

    def test_vit_on_real_images(self, tmp_path):
        images = digit_images(32, 1)
        backbone = vit()
        # The patch embedding holds a class token of its own and looks its
        # positions up on a constant: keras_collapse's own unroller reads it.
        assert Graph.from_model(backbone).opaque == []
        new = kc.make_collapsible(backbone)
        assert "vit_patching_and_embedding_class_token" in [
            layer.name for layer in new.layers
        ]
        layers = kc.collapsible_layers(new)
        assert len(layers) == 3  # one GELU per encoder block's MLP
        assert_same(new(images), backbone(images))
        _, report = self.check_surgery(new, tmp_path, lock=layers[-1:])
        assert report.count("merge") == 1

    @pytest.mark.parametrize("name", ["mobilenet", "efficientnet"])
    def test_cnn_blocks(self, name, tmp_path):
        backbone = {"mobilenet": mobilenet, "efficientnet": efficientnet}[name]()
        graph = Graph.from_model(backbone)
        assert graph.opaque == []
        assert hub_composites(backbone)  # there were composite blocks
        blocks = hub_composites(backbone)
        new = kc.make_collapsible(backbone)
        layers = kc.collapsible_layers(new)
        # Activations inside the blocks are reached, named after their block.
        inside = [
            layer for layer in layers if any(layer.name.startswith(b) for b in blocks)
        ]
        assert len(inside) >= 4
        images = digit_images(32, 3)
        assert_same(new(images), backbone(images))
        self.check_surgery(new, tmp_path, lock=layers[::2])
