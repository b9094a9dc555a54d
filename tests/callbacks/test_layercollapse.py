"""LayerCollapse at a normal learning rate: the slopes move, are logged, and
the near-linear ones are locked."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.callbacks.test_joint import digits
from tests.callbacks.test_joint import small_cnn
from tests.testing import TestCase


def pulled(factor=3.0, lr=3e-4):
    model = small_cnn(gates=False)
    x, y = digits()
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    model = kc.make_collapsible(
        model, alpha_regularizer=kc.LinearityRegularizer(factor)
    )
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class TestLayerCollapse(TestCase):
    def test_slopes_reach_the_identity_at_adam_3e_4_and_are_logged(self):
        model = pulled()
        x, y = digits()
        callback = kc.LayerCollapseCallback(objective="depth", verbose=0)
        history = model.fit(
            x, y, batch_size=16, epochs=6, callbacks=[callback], verbose=0
        )
        means = history.history["layercollapse_alpha_mean"]
        assert len(means) == 6 and means[-1] > means[0] > 0
        head = "dense_relu"
        assert history.history[f"layercollapse_alpha_{head}"][-1] > 0.95
        assert head in [la.name for la in callback.locked]
        _, report = kc.surgery(model, return_report=True)
        assert report.after.depth < report.before.depth

    def test_the_issue_flow_without_the_callback(self):
        # make_collapsible(LinearityRegularizer(3.0)), a plain fit at Adam
        # 3e-4, then lock_near_linear(objective="depth"): shallower.
        model = pulled()
        x, y = digits()
        model.fit(x, y, batch_size=16, epochs=6, verbose=0)
        locked = kc.lock_near_linear(model, objective="depth")
        assert locked, [float(la.alpha_numpy()) for la in kc.collapsible_layers(model)]
        small, report = kc.surgery(model, return_report=True)
        assert report.after.depth < report.before.depth
        self.assert_close(
            small.predict(x[:64], verbose=0),
            model.predict(x[:64], verbose=0),
            atol=1e-4,
        )

    def test_unscaled_slopes_barely_move(self):
        # The same run with the slope stored as it is (scale 1): what the
        # scale is for.
        model = small_cnn(gates=False)
        model = kc.make_collapsible(
            model, alpha_regularizer=kc.LinearityRegularizer(3.0), alpha_scale=1
        )
        model.compile(keras.optimizers.Adam(3e-4), "sparse_categorical_crossentropy")
        x, y = digits()
        model.fit(x, y, batch_size=32, epochs=2, verbose=0)
        slopes = [float(la.alpha_numpy()) for la in kc.collapsible_layers(model)]
        assert max(slopes) < 0.05, slopes

    def test_locking_nothing_says_how_close_the_slopes_came(self):
        model = pulled()
        with pytest.warns(UserWarning, match=r"locked nothing.*\|alpha - 1\| = 1"):
            assert kc.lock_near_linear(model) == []

    def test_needs_a_pulled_slope(self):
        model = small_cnn()  # slopes trainable, no regularizer
        x, y = digits()
        with pytest.raises(ValueError, match="LinearityRegularizer"):
            model.fit(x, y, callbacks=[kc.LayerCollapseCallback()], verbose=0)

    @pytest.mark.parametrize("tolerance", [1.0, -0.1, "0.05", True])
    def test_bad_tolerance(self, tolerance):
        with pytest.raises(ValueError, match="tolerance"):
            kc.LayerCollapseCallback(tolerance)

    def test_history_keys_are_plain_floats(self):
        model = pulled()
        x, y = digits()
        history = model.fit(
            x[:64],
            y[:64],
            epochs=1,
            callbacks=[kc.LayerCollapseCallback(lock=False)],
            verbose=0,
        )
        values = [v[0] for k, v in history.history.items() if k.startswith("layer")]
        assert values and all(isinstance(v, float) and np.isfinite(v) for v in values)
