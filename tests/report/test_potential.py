"""`keras_collapse.inspect` and its potential: what linearizing every merge
unit would save, checked against the real surgery of the model with those
activations locked linear."""

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.report.potential import FIELDS
from keras_collapse.report.potential import help_for
from tests.integration import builders
from tests.testing import TestCase


def cnn(dense_head=True, kernels=(3, 3, 1, 1)):
    """3x3 "same" convs (merge only inexactly), 1x1s that merge, Dense
    layers that merge, BatchNorm with statistics far from the identity."""
    inputs = keras.Input((8, 8, 3))
    h = inputs
    for i, (filters, kernel) in enumerate(zip((8, 8, 16, 8), kernels, strict=True)):
        h = keras.layers.Conv2D(filters, kernel, padding="same", name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    if dense_head:
        h = keras.layers.Dense(32, activation="relu", name="fc")(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(h), name="cnn")
    builders.randomize_batchnorms(model, seed=5)
    return model


def oracle(model, members, exact):
    """Depth, params and MACs the real surgery saves with `members` locked
    linear, and those of its result with nothing locked (the BN-folded
    model): an independent check of the dry run."""
    whole = kc.model_stats(kc.surgery(model, exact=exact))
    locked = kc.make_collapsible(model)
    kc.lock_linear(locked, members)
    small = kc.model_stats(kc.surgery(locked, exact=exact))
    fields = ("depth", "params", "macs")
    total = {f: getattr(whole, f) for f in fields}
    return {f: total[f] - getattr(small, f) for f in fields}, total


class TestPotential(TestCase):
    @pytest.mark.parametrize("exact", [True, False])
    def test_matches_the_surgery_of_every_unit_locked(self, exact):
        model = kc.make_collapsible(cnn())
        before = [w.copy() for w in model.get_weights()]
        potential = kc.inspect(model, exact=exact).potential
        for a, b in zip(model.get_weights(), before, strict=True):
            np.testing.assert_array_equal(a, b)  # the model is not modified
        assert potential.members, "the Dense and 1x1 activations merge"
        saved, total = oracle(model, potential.members, exact)
        for field in saved:
            assert potential.saved[field] == saved[field], field
            assert potential.total[field] == total[field], field
        assert potential.saved["depth"] > 0
        # MacCostModel: latency is MACs.
        assert potential.saved["latency"] == potential.saved["macs"]
        assert potential.share("depth") == saved["depth"] / total["depth"]

    def test_exact_3x3_activations_never_pay_and_say_what_would_help(self):
        potential = kc.inspect(cnn(dense_head=False)).potential
        assert "relu0" in potential.never  # 3x3 "same" into 3x3: border
        reason = potential.never["relu0"]
        assert "border" in reason
        assert "exact=False" in help_for(reason)
        assert "exact=False" not in help_for(reason, exact=False)
        text = str(potential)
        assert "Never pay" in text and "What would help" in text
        assert 'objective="activations"' in text
        inexact = kc.inspect(cnn(dense_head=False), exact=False).potential
        assert "relu0" in inexact.members
        assert inexact.share("depth") > potential.share("depth")

    def test_a_vgg_stack_has_no_unit_and_says_so(self):
        potential = kc.inspect(cnn(dense_head=False, kernels=(3, 3, 3, 3))).potential
        assert potential.units == [] and potential.members == []
        assert potential.saved == dict.fromkeys(FIELDS, 0)
        text = str(potential)
        assert "No merge unit" in text and "Never pay (4" in text

    def test_as_dict_carries_saved_total_and_share(self):
        potential = kc.inspect(cnn()).potential
        data = potential.as_dict()
        for field in FIELDS:
            entry = data[field]
            assert entry["share"] == pytest.approx(entry["saved"] / entry["total"])
            assert 0 < entry["share"] < 1, field
        shares = [u["share"]["macs"] for u in data["units"]]
        assert shares == [
            pytest.approx(u.macs / potential.total["macs"]) for u in potential.units
        ]
        table = str(potential)
        first = potential.units[0]
        assert f"({first.macs / potential.total['macs']:.1%})" in table
        assert f"target <= {int(potential.share('depth') * 1000) / 1000:g}" in table

    def test_no_potential_without_activations(self):
        inputs = keras.Input((4,))
        model = keras.Model(
            inputs, keras.layers.Dense(2)(keras.layers.Dense(3)(inputs))
        )
        found = kc.inspect(model)
        assert found.potential is None
        assert any("No activations to linearize" in n for n in found.notes)
        assert found.as_dict()["potential"] is None

    def test_plain_model_is_read_as_converted(self):
        plain = cnn()
        found = kc.inspect(plain)
        assert found.collapsible == []
        assert found.analysed == "make_collapsible(model)"
        converted = kc.inspect(kc.make_collapsible(plain)).potential
        assert found.potential.saved == converted.saved
        assert found.as_dict()["potential_of"] == "make_collapsible(model)"

    def test_skipping_the_potential(self):
        found = kc.inspect(cnn(), potential=False)
        assert found.potential is None
        assert "Potential" not in str(found)

    def test_rejects_what_is_not_a_model(self):
        with pytest.raises(ValueError, match="`model` must be a keras.Model"):
            kc.inspect(keras.layers.Dense(3))
