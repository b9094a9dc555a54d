"""`surgery` on keras-hub backbones built from constructor arguments (no
presets, nothing downloaded), with random BatchNormalization statistics.

Needs `keras-hub` (installed without its dependencies, plus `regex` and
`tokenizers`, which `import keras_hub` needs). Large on JAX (see
`builders.SLOW_ON_JAX`)."""

import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.graph.sample_inputs import random_inputs
from tests.integration import builders
from tests.testing import require

keras_hub = require("keras_hub", "the keras-hub backbones")


def resnet(block_type="basic_block", pre_activation=False, image_shape=(32, 32, 3)):
    # keras-hub requires 64 filters in the first stack, fed by a 64-channel stem.
    model = keras_hub.models.ResNetBackbone(
        input_conv_filters=[16, 64],
        input_conv_kernel_sizes=[3, 3],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type=block_type,
        use_pre_activation=pre_activation,
        image_shape=image_shape,
    )
    builders.randomize_batchnorms(model, seed=3)
    return model


def densenet():
    model = keras_hub.models.DenseNetBackbone(
        stackwise_num_repeats=[2, 2], image_shape=(32, 32, 3), growth_rate=8
    )
    builders.randomize_batchnorms(model, seed=4)
    return model


BACKBONES = {
    "resnet_basic": resnet,
    "resnet_v2_bottleneck": lambda: resnet("bottleneck_block", pre_activation=True),
    "densenet": densenet,
}


class TestKerasHubBackbones(builders.SurgeryTestCase):
    pytestmark = builders.SLOW_ON_JAX

    @pytest.mark.parametrize("name", sorted(BACKBONES))
    def test_unlocked_keeps_every_activation(self, name, tmp_path):
        model = BACKBONES[name]()
        _, report = self.check_surgery(model, tmp_path)
        assert report.after.activations == report.before.activations > 0
        assert report.count("fold_bn") > 0

    @pytest.mark.parametrize("name", sorted(BACKBONES))
    def test_every_other_locked(self, name, tmp_path):
        model, layers = builders.collapsible(BACKBONES[name]())
        assert len(layers) > 2
        self.check_surgery(model, tmp_path, lock=layers[::2])

    def test_any_size_backbone(self, tmp_path):
        # keras-hub's default image_shape is (None, None, 3): the surgery gets
        # the size it verifies at, and skips merges that need a static size.
        model, layers = builders.collapsible(resnet(image_shape=(None, None, 3)))
        self.check_surgery(model, tmp_path, lock=layers, input_shape=(24, 24, 3))

    def test_tlc_linearize_then_surgery(self, tmp_path):
        # keras-hub's ResNet exposes BN -> ReLU: the block-inner ReLUs pair
        # with their BN, the ReLUs after the residual Add do not.
        model, _ = builders.collapsible(resnet())
        analysis = kc.analyze_batchnorm(model)
        paired = [s for s in analysis if s.analysed]
        assert paired and any("merges" in (s.reason or "") for s in analysis)
        for state in paired:  # a trained BN: every fourth channel surely OFF
            bn = model.get_layer(state.batchnorm)
            gamma, beta, *stats = bn.get_weights()
            beta[::4] = -3.0 * np.abs(gamma[::4])
            bn.set_weights([gamma, beta, *stats])
        paired = [s.name for s in paired]
        done = kc.linearize(model, paired)
        assert sum(d.off for d in done) > 0
        _, report = self.check_surgery(model, tmp_path)
        assert report.after.params < report.before.params

    def test_resnet_inexact_merge_reports_its_deviation(self):
        # stack0's inner ReLU locked: its 3x3 -> 3x3 "same" pair is exact only
        # away from the border, so the exact surgery keeps both convs; an
        # inexact one (with a cost model that prices layers, not MACs)
        # merges them into a 5x5 and reports the deviation it measured.
        model, layers = builders.collapsible(resnet())
        lock = [layer for layer in layers if layer.name == "stack0_block0_1_relu"]
        kc.lock_linear(model, lock)
        _, exact = kc.surgery(model, return_report=True)
        assert exact.count("merge") == 0
        assert any("border" in entry.detail for entry in exact.skipped)
        small, report = kc.surgery(
            model,
            exact=False,
            cost_model=kc.MacCostModel(layer_overhead=1e9),
            return_report=True,
        )
        assert report.count("merge") == 1 and report.count("absorb_residual") == 1
        assert report.after.depth == exact.after.depth - 1
        x = random_inputs(model)
        own = builders.relative_error(
            builders.outputs_of(model, x), builders.outputs_of(small, x)
        )
        assert own > builders.TOLERANCE
        np.testing.assert_allclose(report.deviation, own, rtol=1e-3)
