"""One argument, one judgment: the callbacks refuse what they used to
disagree on with a ValueError naming the argument, in Keras' style."""

import warnings

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.callbacks import arguments
from tests.testing import TestCase

X = np.zeros((8, 4), "float32")


def tiny_model():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6)(inputs)
    h = kc.CollapsibleActivation("relu", alpha_regularizer=None, name="act")(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    return model


class TestZeroEntropy(TestCase):
    """EASIER took any `zero_entropy` while NEPENTHE refused it: both now
    want a number >= 0, in bits."""

    @pytest.mark.parametrize("bad", ["high", -0.1, None, True, float("nan")])
    @pytest.mark.parametrize("method", ["easier", "nepenthe"])
    def test_refused(self, method, bad):
        make = kc.EASIERCallback if method == "easier" else kc.NEPENTHECallback
        with pytest.raises(ValueError, match=r"`zero_entropy` must be a number >= 0"):
            make(X, zero_entropy=bad)

    def test_message_names_what_was_received(self):
        with pytest.raises(ValueError, match=r"Received: zero_entropy='high'"):
            kc.EASIERCallback(X, zero_entropy="high")

    @pytest.mark.parametrize("method", ["easier", "nepenthe"])
    def test_accepted(self, method):
        make = kc.EASIERCallback if method == "easier" else kc.NEPENTHECallback
        assert make(X, zero_entropy=0).zero_entropy == 0
        assert make(X, zero_entropy=0.5).scorer.zero_entropy == 0.5


class TestSamples(TestCase):
    """`samples` is the name everywhere; TLC's old `validation_samples`
    still works, with a DeprecationWarning."""

    def test_tlc_takes_samples(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            tlc = kc.TLCCallback(samples=256)
        assert tlc.samples == 256 and tlc.validation_samples == 256

    def test_default(self):
        assert kc.TLCCallback().samples == 1024

    def test_validation_samples_warns_and_works(self):
        with pytest.warns(DeprecationWarning, match="`validation_samples`.*`samples`"):
            tlc = kc.TLCCallback(validation_samples=16, verbose=0)
        assert tlc.samples == 16
        model = tiny_model()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 4)).astype("float32")
        y = rng.standard_normal((64, 2)).astype("float32")
        tlc = kc.TLCCallback((x, y), validation_samples=16, verbose=0)
        model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[tlc])
        assert len(tlc._sample[0]) == 16  # the fixed sample has that many rows

    def test_both_names_refused(self):
        with pytest.raises(ValueError, match="samples.*validation_samples"):
            kc.TLCCallback(samples=256, validation_samples=128)

    @pytest.mark.parametrize("bad", [0, 1.5, "all", True])
    def test_bad_samples(self, bad):
        with pytest.raises(ValueError, match=r"`samples` must be an int >= 1"):
            kc.TLCCallback(samples=bad)
        with pytest.raises(ValueError, match=r"`samples` must be an int >= 1"):
            kc.TLCCallback(validation_samples=bad)

    def test_check_samples_removes_the_old_name(self):
        kwargs = {"validation_samples": 8, "interval": 2}
        with pytest.warns(DeprecationWarning):
            assert arguments.check_samples(None, kwargs, "here") == 8
        assert kwargs == {"interval": 2}


class TestFractions(TestCase):
    """The fractions once checked by hand (the joint target, NEPENTHE's
    prune fraction, the pruning fractions and cap) say their range."""

    @pytest.mark.parametrize("bad", [0, 1.5, -0.1, True, "half", None])
    def test_target(self, bad):
        with pytest.raises(ValueError, match=r"`target` must be a number in \(0, 1\]"):
            kc.JointLinearizationCallback(bad)

    def test_target_one_is_allowed(self):
        assert kc.JointLinearizationCallback(1).target == 1.0

    @pytest.mark.parametrize("bad", [0, 1, 1.5, True, "half"])
    def test_prune_fraction(self, bad):
        match = r"`prune_fraction` must be a number in \(0, 1\)"
        with pytest.raises(ValueError, match=match):
            kc.NEPENTHECallback(X, prune_fraction=bad)

    @pytest.mark.parametrize("name", ["search", "polarize"])
    @pytest.mark.parametrize("bad", [0, 1, True, "auto"])
    def test_shares(self, name, bad):
        with pytest.raises(ValueError, match=rf"`{name}` must be a number in \(0, 1\)"):
            kc.JointLinearizationCallback(0.5, **{name: bad})


class TestTolerance(TestCase):
    """Two tolerances, one name each: the callbacks' drop of the monitored
    value (>= 0), the slope's distance from 1 when locking (in [0, 1))."""

    @pytest.mark.parametrize("bad", [-0.01, "1%", True, float("inf")])
    def test_callbacks(self, bad):
        with pytest.raises(ValueError, match=r"`tolerance` must be a number >= 0"):
            kc.TLCCallback(tolerance=bad)

    @pytest.mark.parametrize("bad", [-0.01, 1, True, "1%"])
    def test_layercollapse(self, bad):
        match = r"`tolerance` must be a number in \[0, 1\)"
        with pytest.raises(ValueError, match=match):
            kc.LayerCollapseCallback(bad)

    def test_docstrings_say_which(self):
        engine = kc.LinearizationCallback.__doc__
        assert "Not `lock_near_linear`'s `tolerance`" in engine
        assert "max |alpha - 1|" in kc.lock_near_linear.__doc__
        assert "max |alpha - 1|" in kc.LayerCollapseCallback.__doc__


class TestSharedChecks(TestCase):
    @pytest.mark.parametrize("make", [kc.TLCCallback, kc.JointLinearizationCallback])
    def test_shared_by_engine_and_joint(self, make):
        with pytest.raises(ValueError, match=r"`exact` must be True or False"):
            make(exact=1)
        with pytest.raises(ValueError, match=r"`candidates` must be a list"):
            make(candidates="act")
        with pytest.raises(ValueError, match=r"`cost_model` must be callable"):
            make(cost_model="macs")
        with pytest.raises(ValueError, match=r"`data` must be arrays"):
            make(data=3)
        with pytest.raises(ValueError, match=r"`batch_size` must be an int >= 1"):
            make(batch_size=0)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"mode": "up"}, r"`mode` must be one of \['auto', 'min', 'max'\]"),
            ({"recalibrate": "yes"}, r"`recalibrate` must be one of"),
            ({"ranking": "best"}, r"`ranking` must be one of .*or a scorer"),
            ({"multi_removal": "yes"}, r"`multi_removal` must be True or False"),
        ],
    )
    def test_choices(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            kc.TLCCallback(**kwargs)

    def test_nepenthe_choices(self):
        with pytest.raises(ValueError, match=r"`granularity` must be one of"):
            kc.NEPENTHECallback(X, granularity="rows")
        with pytest.raises(ValueError, match=r"`per_layer_logs` must be True"):
            kc.NEPENTHECallback(X, per_layer_logs=1)
