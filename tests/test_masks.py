"""`ZeroMask` and `hold_at_zero`: weights held at exactly zero through `fit`,
saving and loading; the old `ZeroChannels` name."""

import json
import os
import zipfile

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.actions.linearize import ZeroChannels
from keras_collapse.actions.linearize import rebuild_train_function
from keras_collapse.masks import ZeroMask
from keras_collapse.masks import held_mask
from keras_collapse.masks import hold_at_zero
from keras_collapse.masks import strip_masks
from tests.testing import TestCase

# What `keras.constraints.serialize(ZeroChannels(...))` gave before ZeroMask.
OLD_CONFIG = {
    "module": "keras_collapse.actions.linearize",
    "class_name": "ZeroChannels",
    "config": {
        "mask": [True, False, True],
        "inner": {
            "module": "keras.constraints",
            "class_name": "NonNeg",
            "config": {},
            "registered_name": None,
        },
    },
    "registered_name": "keras_collapse>ZeroChannels",
}


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def model_with_kernels():
    x = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(2, name="fc")(h))


def random_masks(model, seed=0):
    rng = np.random.default_rng(seed)
    return {
        name: rng.random(model.get_layer(name).kernel.shape) < 0.4
        for name in ("conv", "dw", "fc")
    }


class TestZeroMask(TestCase):
    def test_applies_inner_then_zeroes(self):
        constraint = ZeroMask([[True, False], [False, False]], "non_neg")
        w = np.array([[3.0, -2.0], [1.0, 4.0]], "float32")
        np.testing.assert_array_equal(numpy(constraint(w)), [[0, 0], [1, 4]])

    def test_round_trip_is_compact(self):
        mask = self.rng().random((300, 400)) < 0.5
        constraint = ZeroMask(mask, keras.constraints.MaxNorm(2.0))
        config = keras.constraints.serialize(constraint)
        assert len(json.dumps(config)) < mask.size / 4  # packed bits, base64
        clone = keras.constraints.deserialize(config)
        assert type(clone) is ZeroMask
        np.testing.assert_array_equal(clone.mask, mask)
        assert isinstance(clone.inner, keras.constraints.MaxNorm)

    def test_wrong_shape_is_refused(self):
        with pytest.raises(ValueError, match=r"shape \(2,\)"):
            ZeroMask([True, False])(np.zeros((3, 2), "float32"))

    def test_old_zero_channels_config_loads(self):
        clone = keras.constraints.deserialize(OLD_CONFIG)
        assert isinstance(clone, ZeroMask)
        np.testing.assert_array_equal(clone.mask, [True, False, True])
        w = np.array([3.0, -2.0, 5.0], "float32")
        np.testing.assert_array_equal(numpy(clone(w)), [0.0, 0.0, 0.0])
        # The old name still constructs, and round-trips.
        again = keras.constraints.deserialize(
            keras.constraints.serialize(ZeroChannels([False, True]))
        )
        np.testing.assert_array_equal(again.mask, [False, True])

    def test_old_zero_channels_in_a_saved_file_loads(self, tmp_path):
        x = keras.Input((4,))
        h = keras.layers.Dense(3, name="fc")(x)
        model = keras.Model(x, keras.layers.BatchNormalization(name="bn")(h))
        path = os.path.join(str(tmp_path), "model.keras")
        model.save(path)
        # Rewrite the file's config as the old code would have saved it.
        edited = os.path.join(str(tmp_path), "old.keras")
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(edited, "w") as out:
            for item in source.infolist():
                data = source.read(item.filename)
                if item.filename == "config.json":
                    config = json.loads(data)
                    for layer in config["config"]["layers"]:
                        if layer["config"]["name"] == "bn":
                            layer["config"]["gamma_constraint"] = OLD_CONFIG
                    data = json.dumps(config).encode()
                out.writestr(item, data)
        loaded = keras.saving.load_model(edited)
        bn = loaded.get_layer("bn")
        assert isinstance(bn.gamma.constraint, ZeroMask)
        np.testing.assert_array_equal(bn.gamma.constraint.mask, [True, False, True])


class TestHoldAtZero(TestCase):
    def test_zeroes_now_and_sets_variable_and_config(self):
        model = model_with_kernels()
        masks = random_masks(model)
        for name, mask in masks.items():
            layer = model.get_layer(name)
            held = hold_at_zero(layer, "kernel", mask)
            assert held.added == mask.sum()
            np.testing.assert_array_equal(numpy(layer.kernel)[mask], 0.0)
            assert (numpy(layer.kernel)[~mask] != 0).all()
            assert isinstance(layer.kernel.constraint, ZeroMask)
            key = "depthwise_constraint" if name == "dw" else "kernel_constraint"
            saved = layer.get_config()[key]
            assert saved["class_name"] == "ZeroMask", saved

    def test_masks_accumulate_and_undo_restores(self):
        layer = model_with_kernels().get_layer("fc")
        layer.kernel.constraint = layer.kernel_constraint = keras.constraints.NonNeg()
        first = np.zeros(layer.kernel.shape, bool)
        first[0] = True
        second = np.zeros(layer.kernel.shape, bool)
        second[:, 1] = True
        a = hold_at_zero(layer, "kernel", first)
        b = hold_at_zero(layer, "kernel", second)
        np.testing.assert_array_equal(held_mask(layer, "kernel"), first | second)
        assert isinstance(layer.kernel.constraint.inner, keras.constraints.NonNeg)
        assert b.added == (second & ~first).sum()
        b.undo()
        np.testing.assert_array_equal(held_mask(layer, "kernel"), first)
        a.undo()
        assert isinstance(layer.kernel.constraint, keras.constraints.NonNeg)
        assert isinstance(layer.kernel_constraint, keras.constraints.NonNeg)

    def test_bad_arguments(self):
        layer = model_with_kernels().get_layer("fc")
        with pytest.raises(ValueError, match=r"one of \['bias', 'kernel'\]"):
            hold_at_zero(layer, "gamma", np.zeros((4, 2), bool))
        with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
            hold_at_zero(layer, "kernel", np.zeros((2, 4), bool))
        with pytest.raises(ValueError, match="not built"):
            hold_at_zero(keras.layers.Dense(2), "kernel", [True])
        prelu = keras.layers.PReLU()
        prelu.build((None, 3))
        prelu.alpha_constraint = None  # PReLU saves it: works
        hold_at_zero(prelu, "alpha", [True, False, False])


class TestThroughTraining(TestCase):
    def data(self):
        return self.random_inputs((32, 6, 6, 3)), self.random_inputs((32, 2), seed=1)

    def hold(self, model, seed=0):
        masks = random_masks(model, seed)
        for name, mask in masks.items():
            hold_at_zero(model.get_layer(name), "kernel", mask)
        return masks

    def assert_held(self, model, masks, moved_from=None):
        for name, mask in masks.items():
            kernel = numpy(model.get_layer(name).kernel)
            np.testing.assert_array_equal(kernel[mask], 0.0, err_msg=name)
            if moved_from is not None:
                assert (kernel[~mask] != moved_from[name][~mask]).all(), name

    def kernels(self, model):
        return {n: numpy(model.get_layer(n).kernel).copy() for n in ("conv", "dw")}

    def test_masked_entries_stay_zero_through_fit(self):
        model = model_with_kernels()
        model.compile(keras.optimizers.Adam(0.05), "mse")
        x, y = self.data()
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # train function built
        masks = self.hold(model)
        rebuild_train_function(model)  # the compiled step has no mask yet
        before = self.kernels(model)
        model.fit(x, y, epochs=2, batch_size=8, verbose=0)  # Adam moves zeros
        self.assert_held(model, masks)
        for name, kernel in self.kernels(model).items():
            moved = kernel[~masks[name]] != before[name][~masks[name]]
            assert moved.mean() > 0.2, name  # the others train (a channel
            # whose every path is masked further on gets no gradient)

    def test_masks_survive_save_load_and_more_training(self, tmp_path):
        model = model_with_kernels()
        masks = self.hold(model, seed=3)
        loaded = self.save_and_load(model, tmp_path)
        for name, mask in masks.items():
            held = held_mask(loaded.get_layer(name), "kernel")
            np.testing.assert_array_equal(held, mask)
        self.assert_held(loaded, masks)
        loaded.compile(keras.optimizers.Adam(0.05), "mse")
        x, y = self.data()
        before = self.kernels(loaded)
        loaded.fit(x, y, epochs=2, batch_size=8, verbose=0)
        self.assert_held(loaded, masks)
        for name, kernel in self.kernels(loaded).items():
            moved = kernel[~masks[name]] != before[name][~masks[name]]
            assert moved.mean() > 0.2, name  # the others train (a channel
            # whose every path is masked further on gets no gradient)

    def test_linearized_batchnorm_keeps_its_zeros_after_loading(self, tmp_path):
        x = keras.Input((6,))
        h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(8)(x))
        h = kc.CollapsibleActivation(name="act")(h)
        model = keras.Model(x, keras.layers.Dense(2)(h))
        bn = model.get_layer("bn")
        bn.beta.assign(np.array([-3, 1] * 4, "float32"))  # P(OFF) = 0.9987
        (done,) = kc.linearize(model, "act")
        assert done.off == 4
        loaded = self.save_and_load(model, tmp_path)
        off = held_mask(loaded.get_layer("bn"), "gamma")
        np.testing.assert_array_equal(off, [True, False] * 4)
        loaded.compile(keras.optimizers.Adam(0.1), "mse")
        loaded.fit(self.random_inputs((16, 6)), self.random_inputs((16, 2)), verbose=0)
        np.testing.assert_array_equal(numpy(loaded.get_layer("bn").gamma)[off], 0.0)
        np.testing.assert_array_equal(numpy(loaded.get_layer("bn").beta)[off], 0.0)
        done.undo()
        assert bn.gamma.constraint is None and bn.gamma_constraint is None


class TestStripMasks(TestCase):
    def test_replaces_masks_by_their_inner_constraint(self):
        model = model_with_kernels()
        fc = model.get_layer("fc")
        fc.kernel.constraint = fc.kernel_constraint = keras.constraints.NonNeg()
        masks = random_masks(model)
        for name, mask in masks.items():
            hold_at_zero(model.get_layer(name), "kernel", mask)
        assert strip_masks(model) == 3
        assert isinstance(fc.kernel_constraint, keras.constraints.NonNeg)
        assert isinstance(fc.kernel.constraint, keras.constraints.NonNeg)
        assert model.get_layer("conv").kernel.constraint is None
        assert model.get_layer("dw").depthwise_constraint is None
