"""`surgery` on `keras.applications` models and on hand-built graphs.

Random weights, random BatchNormalization statistics, small inputs. The
oracle is the input model itself: with some collapsible activations locked
linear, the result must compute what the locked model computes.
"""

import keras
import pytest

import keras_collapse as kc
from keras_collapse.layers.bias_map import is_bias_map
from tests.integration import builders

# Graphs whose activations are all collapsible and whose linear runs merge.
MERGEABLE = [
    builders.residual_cnn,
    builders.nested_net,
    builders.mlp,
    builders.conv1d_net,
    builders.small_vgg,
    builders.sequential_cnn,
    builders.token_mlp,
]
HAND_BUILT = MERGEABLE + [builders.gated_net, builders.unmergeable_convs]


def mobilenet_v2():
    model = keras.applications.MobileNetV2(
        alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10
    )
    builders.randomize_batchnorms(model, seed=1)
    return model


def whole_blocks(layers, blocks):
    """The activations of MobileNetV2 blocks `blocks` (both per block)."""
    prefixes = tuple(f"block_{b}_" for b in blocks)
    return [layer for layer in layers if layer.name.startswith(prefixes)]


class TestMobileNetV2(builders.SurgeryTestCase):
    pytestmark = builders.SLOW_ON_JAX

    def test_locked_blocks_merge(self, tmp_path):
        model, layers = builders.collapsible(mobilenet_v2())
        assert len(layers) == 35
        # Every other activation, and both activations of blocks 3 (stride 2)
        # and 4, 5 (residual). Blocks 4 and 5 become one 3x3 conv each, its
        # identity shortcut and a border-aware bias map included; block 3's
        # explicit ZeroPadding2D keeps its convs apart.
        chosen = layers[::2] + whole_blocks(layers, [3, 4, 5])
        lock = list({id(layer): layer for layer in chosen}.values())
        small, report = self.check_surgery(model, tmp_path, lock=lock)
        assert report.count("merge") >= 2
        assert report.count("absorb_residual") >= 2
        assert any(is_bias_map(layer) for layer in small.layers)
        assert report.after.depth < report.before.depth
        assert report.after.macs < report.before.macs

    @pytest.mark.large
    def test_unlocked_keeps_every_activation(self, tmp_path):
        model = mobilenet_v2()
        _, report = self.check_surgery(model, tmp_path)
        # Every BatchNormalization follows a conv there.
        assert report.count("fold_bn") == len(builders.batchnorm_layers(model))
        # 35 ReLU6 and the softmax of the classifier.
        assert report.after.activations == report.before.activations == 36
        assert report.after.depth == report.before.depth


LARGE_APPLICATIONS = [
    keras.applications.ResNet50,
    keras.applications.ResNet50V2,
    keras.applications.VGG16,
]


def application(constructor):
    model = constructor(input_shape=(32, 32, 3), weights=None, classes=10)
    builders.randomize_batchnorms(model, seed=2)
    return model


# 15-25 s each on TensorFlow and PyTorch, about a minute on JAX. The default
# run has MobileNetV2 above and keras-hub's ResNet and DenseNet (both large on
# JAX), and the hand-built residual and VGG-style graphs below.
@pytest.mark.large
class TestApplications(builders.SurgeryTestCase):
    @pytest.mark.parametrize(
        "constructor", LARGE_APPLICATIONS, ids=lambda c: c.__name__
    )
    def test_every_other_locked(self, constructor, tmp_path):
        model, layers = builders.collapsible(application(constructor))
        self.check_surgery(model, tmp_path, lock=layers[::2])

    @pytest.mark.parametrize(
        "constructor", LARGE_APPLICATIONS, ids=lambda c: c.__name__
    )
    def test_unlocked_keeps_every_activation(self, constructor, tmp_path):
        _, report = self.check_surgery(application(constructor), tmp_path)
        assert report.after.activations == report.before.activations

    def test_vgg16_dense_head_merges(self, tmp_path):
        model, layers = builders.collapsible(application(keras.applications.VGG16))
        fc = [layer for layer in layers if layer.name.startswith("fc")]
        assert len(fc) == 2
        _, report = self.check_surgery(model, tmp_path, lock=fc)
        # fc1 -> fc2 -> predictions become one Dense.
        assert report.after.depth == report.before.depth - 2
        assert report.after.macs < report.before.macs


class TestHandBuilt(builders.SurgeryTestCase):
    @pytest.mark.parametrize("build", HAND_BUILT, ids=lambda f: f.__name__)
    def test_unlocked_keeps_every_activation(self, build, tmp_path):
        model = build()
        _, report = self.check_surgery(model, tmp_path)
        assert report.after.activations == report.before.activations > 0
        if build is not builders.unmergeable_convs:
            # Each BatchNormalization sits next to a stock Conv/Dense.
            assert report.count("fold_bn") == len(builders.batchnorm_layers(model))

    @pytest.mark.parametrize("build", HAND_BUILT, ids=lambda f: f.__name__)
    def test_locked_step_by_step(self, build, tmp_path):
        # As training locks them: every other activation first, then all.
        model, layers = builders.collapsible(build())
        self.check_surgery(model, tmp_path, lock=layers[::2])
        _, report = self.check_surgery(model, tmp_path, lock=layers)
        if build in MERGEABLE:
            assert report.after.activations == 0
            assert report.after.depth < report.before.depth

    def test_bias_map_merge_in_a_residual(self, tmp_path):
        # layers[1] is the ReLU inside residual_cnn's identity block: locked,
        # its 1x1 (BN bias) -> 3x3 "same" pair and the shortcut become one
        # conv and a bias map.
        model, layers = builders.collapsible(builders.residual_cnn())
        lock = [layers[1]]
        _, report = self.check_surgery(model, tmp_path, lock=lock)
        assert report.count("absorb_residual") == 1
        assert any("bias map" in entry.detail for entry in report.done)

    def test_second_surgery_changes_nothing(self, tmp_path):
        model, layers = builders.collapsible(builders.residual_cnn())
        first, _ = self.check_surgery(model, tmp_path, lock=layers)
        assert any(is_bias_map(layer) for layer in first.layers)
        _, report = self.check_surgery(first, tmp_path)
        assert report.done == []
        assert report.after == report.before

    def test_multi_io_with_shared_tower(self, tmp_path):
        model, layers = builders.collapsible(builders.multi_io_net())
        _, report = self.check_surgery(model, tmp_path, lock=layers[::2])
        assert report.count("merge") >= 1

    def test_nested_model_stats_use_the_call_shapes(self):
        # The nested models declare (None, None, 8) inputs but are called on
        # 8 x 8 maps; counting them as 32 x 32 gave 13x the MACs.
        model = builders.nested_net()
        flat, _ = builders.collapsible(model)
        assert kc.model_stats(model).macs == kc.model_stats(flat).macs
