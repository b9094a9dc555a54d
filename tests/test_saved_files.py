"""Nothing breaks for users (issue 22, item 6): files saved by release 0.1.0
load and compute what they computed, keep their slopes, locks and masks
through a training step, and every import path and registered name of the
release still resolves.

The files and their oracles (`tests/fixtures/release_0_1/`) were made once,
on TensorFlow, by `tests/fixtures/make_release_fixtures.py`, and are not
regenerated: here they load on every backend. `manifest.json` records what
each file holds and the release's public modules and names.
"""

import importlib
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.testing import TestCase

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "release_0_1"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
INFO = MANIFEST["fixtures"]
NAMES = sorted(INFO)
COMPILED = [name for name in NAMES if INFO[name]["compiled"]]
WITH_COLLAPSIBLE = [name for name in NAMES if INFO[name]["collapsible"]]
WITH_MASKS = [name for name in NAMES if INFO[name]["masks"]]
ATOL = RTOL = 1e-5


def large_off_tensorflow(test):
    """Marks a test large except on TensorFlow: for a fresh process, whose
    cost is its imports. TensorFlow's dominates, and on torch and JAX loading
    a collapsible layer imports it too (Keras' `activations.serialize`
    reaches for `tf`), so TensorFlow is where a fresh process costs least."""
    if keras.backend.backend() == "tensorflow":
        return test
    return pytest.mark.large(test)


# The `register_keras_serializable(package="keras_collapse")` classes: the
# names the files' configs use to find them.
REGISTERED = {
    "keras_collapse>BiasMap": "BiasMap",
    "keras_collapse>CollapsibleActivation": "CollapsibleActivation",
    "keras_collapse>CollapsiblePReLU": "CollapsiblePReLU",
    "keras_collapse>LinearityRegularizer": "LinearityRegularizer",
    "keras_collapse>ZeroChannels": "ZeroChannels",
    "keras_collapse>ZeroMask": "ZeroMask",
}

PUBLIC_MODULES = sorted(MANIFEST["public_names"])
# The packages of 0.1.0 (their `__init__` exports are public API).
_PACKAGES = {
    "keras_collapse",
    *(
        m
        for m in PUBLIC_MODULES
        if any(other.startswith(m + ".") for other in PUBLIC_MODULES)
    ),
}
# A name a user's code may import from 0.1.0: a package's export, or such an
# export at the module that defined it (`keras_collapse.units.merge_units`).
# The modules' other names were internals; they may move.
_EXPORTED = {
    name for module in _PACKAGES for name in MANIFEST["public_names"].get(module, [])
}
PUBLIC_NAMES = [
    (module, name)
    for module, names in sorted(MANIFEST["public_names"].items())
    for name in names
    if module in _PACKAGES or name in _EXPORTED
]
_KEPT = set(PUBLIC_NAMES)
SAME_OBJECTS = [
    kept
    for kept in (
        [path for path in group if tuple(path) in _KEPT]
        for group in MANIFEST["same_objects"]
    )
    if len(kept) > 1
]


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def load(name):
    compiled = INFO[name]["compiled"]
    return keras.saving.load_model(FIXTURES / f"{name}.keras", compile=compiled)


def oracle(name):
    with np.load(FIXTURES / f"{name}.npz") as data:
        return dict(data)


def variable_of(layer, weight):
    (variable,) = [v for v in layer.weights if v.name == weight]
    return variable


def trained_slopes(name):
    """The fixture's unlocked collapsible layers with the LayerCollapse pull."""
    return [
        layer_name
        for layer_name, want in INFO[name]["collapsible"].items()
        if want["regularizer_factor"] and not want["locked"]
    ]


def test_fixtures_are_there_and_small():
    assert MANIFEST["keras_collapse"] == "0.1.0"
    assert set(NAMES) == {
        "collapsible",
        "pruned",
        "surgery_merged",
        "surgery_tlc",
        "tlc_linearized",
    }
    assert COMPILED and WITH_COLLAPSIBLE and WITH_MASKS
    assert trained_slopes("collapsible") and trained_slopes("pruned")
    locked = [w["locked"] for w in INFO["collapsible"]["collapsible"].values()]
    assert 0 < sum(locked) < len(locked)
    for path in FIXTURES.iterdir():
        assert path.stat().st_size < 200_000, path


class TestSavedFiles(TestCase):
    @pytest.mark.parametrize("name", NAMES)
    def test_loads_and_computes_what_it_computed(self, name):
        model = load(name)
        data = oracle(name)
        info = INFO[name]
        got = [[layer.name, type(layer).__name__] for layer in model.layers]
        assert got == info["layers"]
        stored = {k[len("weight:") :] for k in data if k.startswith("weight:")}
        assert {v.path for v in model.weights} == stored
        for variable in model.weights:
            np.testing.assert_array_equal(
                numpy(variable), data[f"weight:{variable.path}"], err_msg=variable.path
            )
        self.assert_close(model(data["x"], training=False), data["y"], ATOL, RTOL)
        if info["compiled"]:
            assert model.compiled
            iterations = int(numpy(model.optimizer.iterations))
            assert iterations == info["optimizer_iterations"]

    @pytest.mark.parametrize("name", ["surgery_merged", "surgery_tlc"])
    def test_surgery_results_are_plain_keras(self, name):
        model = load(name)
        for layer in model.layers:
            assert type(layer).__module__.startswith("keras."), layer
        if name == "surgery_merged":  # the border-aware bias of the merge
            maps = [
                layer
                for layer in model.layers
                if isinstance(layer, keras.layers.Rescaling)
                and np.ndim(layer.offset) == 3
            ]
            assert [layer.name for layer in maps] == ["expand_conv_bias"]
            assert np.shape(maps[0].offset) == (8, 8, 6)
            assert np.ptp(np.asarray(maps[0].offset)[..., 0]) > 0  # varies

    @pytest.mark.parametrize("name", WITH_COLLAPSIBLE)
    def test_collapsible_layers_keep_class_slopes_and_locks(self, name):
        model = load(name)
        data = oracle(name)
        layers = {layer.name: layer for layer in kc.collapsible_layers(model)}
        assert sorted(layers) == sorted(INFO[name]["collapsible"])
        for layer_name, want in INFO[name]["collapsible"].items():
            layer = layers[layer_name]
            assert type(layer) is getattr(kc, want["class"]), layer_name
            assert layer.activation == want["activation"]
            assert layer.is_locked is want["locked"], layer_name
            alpha = data[f"alpha:{layer_name}"]
            np.testing.assert_array_equal(layer.alpha_numpy(), alpha)
            assert list(layer.alpha.shape) == want["alpha_shape"]
            assert layer.alpha_scale == want["alpha_scale"]
            bounds = None if layer.alpha_range is None else list(layer.alpha_range)
            assert bounds == want["alpha_range"]
            factor = want["regularizer_factor"]
            if factor is None:
                assert layer.alpha_regularizer is None
            else:
                assert type(layer.alpha_regularizer) is kc.LinearityRegularizer
                assert layer.alpha_regularizer.factor == factor
                assert layer.alpha.trainable
        # The fixtures trained their slopes away from the init and the lock.
        for layer_name in trained_slopes(name):
            alpha = data[f"alpha:{layer_name}"]
            assert np.all((alpha > 0.05) & (alpha < 0.95)), layer_name

    @pytest.mark.parametrize("name", WITH_MASKS)
    def test_masks_are_still_on_their_weights(self, name):
        model = load(name)
        data = oracle(name)
        for key, want in INFO[name]["masks"].items():
            layer = model.get_layer(want["layer"])
            variable = variable_of(layer, want["weight"])
            mask = data[f"mask:{key}"]
            assert mask.sum() == want["held"] > 0
            # In the variable (what `fit` applies) and the layer's attribute
            # (what `get_config` saves again).
            for constraint in (variable.constraint, getattr(layer, want["attribute"])):
                assert type(constraint) is kc.ZeroMask, key
                np.testing.assert_array_equal(constraint.mask, mask, err_msg=key)
                inner = constraint.inner
                assert (None if inner is None else type(inner).__name__) == want[
                    "inner"
                ]
            saved = layer.get_config()[want["attribute"]]
            assert saved["registered_name"] == "keras_collapse>ZeroMask"
            np.testing.assert_array_equal(numpy(variable)[mask], 0.0, err_msg=key)

    @pytest.mark.parametrize("name", COMPILED)
    def test_one_training_step_keeps_masks_and_locks(self, name, one_torch_thread):
        model = load(name)
        data = oracle(name)
        info = INFO[name]
        if keras.backend.backend() == "jax":
            # The files say jit_compile=False (fast on TensorFlow); JAX's
            # eager step would compile op by op, 4x slower than the jit.
            model.jit_compile = True
        before = {v.path: numpy(v).copy() for v in model.weights}
        model.train_on_batch(data["train_x"], data["train_y"])
        assert int(numpy(model.optimizer.iterations)) == (
            info["optimizer_iterations"] + 1
        )
        for key, want in info["masks"].items():
            variable = variable_of(model.get_layer(want["layer"]), want["weight"])
            mask = data[f"mask:{key}"]
            value = numpy(variable)
            # Adam moves a zero entry with a gradient: only the mask holds it.
            np.testing.assert_array_equal(value[mask], 0.0, err_msg=key)
            assert (value[~mask] != before[variable.path][~mask]).any(), key
        for layer in kc.collapsible_layers(model):
            want = info["collapsible"][layer.name]
            assert layer.is_locked is want["locked"], layer.name
            alpha = layer.alpha_numpy()
            if want["locked"]:
                np.testing.assert_array_equal(alpha, 1.0)
            elif want["regularizer_factor"]:
                assert (alpha != data[f"alpha:{layer.name}"]).all(), layer.name
                assert np.all((alpha >= 0) & (alpha <= 1)), layer.name
        y = numpy(model(data["x"], training=False))
        assert np.max(np.abs(y - data["y"])) > ATOL  # the step changed the model

    @pytest.mark.parametrize("name", NAMES)
    def test_files_name_only_registered_classes(self, name):
        with zipfile.ZipFile(FIXTURES / f"{name}.keras") as archive:
            config = archive.read("config.json").decode()
        named = sorted(set(_registered_names(json.loads(config))))
        assert named == INFO[name]["registered_names"]
        assert set(named) <= set(REGISTERED)

    @large_off_tensorflow
    def test_loads_in_a_fresh_process_after_import_keras_collapse(self, tmp_path):
        """The user's path: `import keras_collapse` (lazy: it registers the
        classes when Keras is imported), then `load_model`, in a process
        where no test imported a submodule first. One file holds every
        registered class the fixtures use. The registering is the package's
        Python, the same on every backend (`large_off_tensorflow`)."""
        used = set().union(*(INFO[name]["registered_names"] for name in NAMES))
        assert set(INFO["pruned"]["registered_names"]) == used
        path = str(FIXTURES / "pruned")
        code = "\n".join(
            [
                "import numpy as np",
                "import keras_collapse",
                f"assert keras_collapse.__file__.startswith({str(ROOT)!r})",
                "import keras",
                f"for name in {sorted(REGISTERED)!r}:",
                "    assert keras.saving.get_registered_object(name), name",
                f"m = keras.saving.load_model({path + '.keras'!r}, compile=False)",
                f"data = np.load({path + '.npz'!r})",
                "y = keras.ops.convert_to_numpy(m(data['x'], training=False))",
                f"np.testing.assert_allclose(y, data['y'], atol={ATOL}, rtol={RTOL})",
                "print('ok')",
            ]
        )
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(tmp_path),
        )
        assert result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def _registered_names(value):
    if isinstance(value, dict):
        name = value.get("registered_name")
        if isinstance(name, str) and name.startswith("keras_collapse>"):
            yield name
        for item in value.values():
            yield from _registered_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from _registered_names(item)


class TestOldNames:
    @pytest.mark.parametrize("registered, class_name", sorted(REGISTERED.items()))
    def test_registered_names_are_found(self, registered, class_name):
        found = keras.saving.get_registered_object(registered)
        assert found is not None and found.__name__ == class_name
        # Saving again writes the same name, which 0.1.0 reads.
        assert keras.saving.get_registered_name(found) == registered

    def test_manifest_lists_the_top_level_names(self):
        names = set(MANIFEST["public_names"]["keras_collapse"])
        assert {"__version__", "surgery", "CollapsiblePReLU", "ZeroMask"} <= names
        assert len(PUBLIC_MODULES) > 80 and len(PUBLIC_NAMES) > 100

    @pytest.mark.parametrize("module", PUBLIC_MODULES)
    def test_module_imports(self, module):
        importlib.import_module(module)

    @pytest.mark.parametrize(
        "module, name", PUBLIC_NAMES, ids=[f"{m}.{n}" for m, n in PUBLIC_NAMES]
    )
    def test_name_imports_from_its_old_path(self, module, name):
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"

    @pytest.mark.parametrize(
        "paths", SAME_OBJECTS, ids=[".".join(group[-1]) for group in SAME_OBJECTS]
    )
    def test_paths_that_named_one_object_still_do(self, paths):
        found = {
            id(getattr(importlib.import_module(module), name)) for module, name in paths
        }
        assert len(found) == 1, paths
