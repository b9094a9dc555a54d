"""keras-cv (its last release, 0.9, imports only where TensorFlow is
installed): a MobileNetV3 backbone from constructor arguments goes through
`make_collapsible` -> `linearize` -> `surgery` exactly, on every backend.

Needs `keras-cv` (installed without its dependencies, plus `dm-tree` and
`tensorflow-datasets`, which `import keras_cv` needs; `scripts/dev.py setup`
installs them)."""

import importlib.util

import numpy as np
import pytest

import keras_collapse as kc
from tests.integration import builders
from tests.testing import require

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("keras-cv imports only with TensorFlow", allow_module_level=True)
keras_cv = require("keras_cv", "the keras-cv backbone")


def mobilenet_v3(se_ratio=None):
    model = keras_cv.models.MobileNetV3Backbone(
        stackwise_expansion=[1, 72.0 / 16, 88.0 / 24, 4],
        stackwise_filters=[16, 24, 24, 40],
        stackwise_kernel_size=[3, 3, 3, 5],
        stackwise_stride=[2, 2, 1, 2],
        stackwise_se_ratio=[se_ratio, None, None, se_ratio],
        stackwise_activation=["relu", "relu", "relu", "hard_swish"],
        include_rescaling=False,
        input_shape=(32, 32, 3),
    )
    builders.randomize_batchnorms(model, seed=7)
    return model


def digit_images(count=4):
    from sklearn.datasets import load_digits

    images = np.kron(load_digits().images[:count] / 16.0, np.ones((4, 4)))
    return np.repeat(images[..., None], 3, axis=-1).astype("float32")


class TestKerasCV(builders.SurgeryTestCase):
    def test_mobilenet_v3_convert_linearize_surgery(self, tmp_path):
        backbone = mobilenet_v3()
        model, layers = builders.collapsible(backbone)
        # The ReLUs between convs; hard_swish's ReLU6 gate feeds a Multiply.
        assert len(layers) >= 4
        images = digit_images()
        self.assert_close(model(images), backbone(images), atol=1e-6)
        paired = [s.name for s in kc.analyze_batchnorm(model) if s.analysed]
        assert paired
        kc.linearize(model, paired[::2])
        _, report = self.check_surgery(model, tmp_path)
        assert report.after.depth < report.before.depth

    def test_squeeze_excite_gate_is_refused_clearly(self):
        # keras-cv's squeeze-and-excite Conv2D holds a layer object as its
        # activation, which its own config cannot rebuild (a keras-cv bug).
        with pytest.raises(ValueError, match="cannot be re-created from its config"):
            kc.make_collapsible(mobilenet_v3(se_ratio=0.25))
