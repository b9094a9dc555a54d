import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.testing import TestCase


class TestLinearityRegularizer(TestCase):
    def test_value_against_numpy(self):
        alpha = self.rng().uniform(-1, 2, (3, 4)).astype("float32")
        reg = kc.LinearityRegularizer(0.7)
        expected = 0.7 * np.sum((1.0 - alpha.astype("float64")) ** 2)
        assert float(keras.ops.convert_to_numpy(reg(alpha))) == pytest.approx(
            expected, rel=1e-6
        )

    def test_zero_at_identity(self):
        assert (
            float(keras.ops.convert_to_numpy(kc.LinearityRegularizer(3.0)(np.ones(5))))
            == 0.0
        )

    def test_config_round_trip(self):
        reg = kc.LinearityRegularizer(factor=1.5)
        assert reg.get_config() == {"factor": 1.5}
        restored = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
        assert isinstance(restored, kc.LinearityRegularizer) and restored.factor == 1.5

    @pytest.mark.parametrize(
        "factor", [-1, float("nan"), float("inf"), "0.2", None, True]
    )
    def test_bad_factor(self, factor):
        with pytest.raises(ValueError, match="Received: factor="):
            kc.LinearityRegularizer(factor)

    def test_strong_penalty_drives_alpha_to_one_during_fit(self):
        inputs = keras.Input((8,))
        h = keras.layers.Dense(16)(inputs)
        act = kc.CollapsiblePReLU(alpha_regularizer=kc.LinearityRegularizer(10.0))
        outputs = keras.layers.Dense(3, activation="softmax")(act(h))
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer=keras.optimizers.Adam(0.05),
            loss="sparse_categorical_crossentropy",
        )
        x = self.random_inputs((256, 8))
        y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
        model.fit(x, y, epochs=8, batch_size=32, verbose=0)
        assert abs(1.0 - float(act.alpha_numpy())) < 0.05
