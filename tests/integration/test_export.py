"""`model.export` of surgery results, reloaded and run with each format's runtime.

The matrix on Keras 3.15 (docs/export.md has the details and the packages):

    format           tensorflow   jax          torch
    tf_saved_model   yes          yes (jax2tf) no: needs torch_xla
    onnx             tf2onnx      jax2onnx     torch.onnx
    litert           yes          no (Keras)   litert-torch (not in extra)
    torch (.pt2)     no (Keras)   no (Keras)   yes

Every test reloads the artifact with its runtime (`tf.saved_model.load`,
`onnxruntime`, the LiteRT interpreter, `torch.export.load`), runs it on
random inputs of batch size 3 (traced with 1 or 2, or dynamically; LiteRT
on torch is static, so it is traced at 3), and compares with
the surgery result's `predict` and with the ORIGINAL model's eager outputs:
an exported result must compute what the model it came from computes.
A backend x format pair Keras cannot export is a plain skip; a missing
package (the `export` extra) skips locally and fails in CI (`require`).
"""

import functools

import keras
import numpy as np
import pytest

import keras_collapse as kc
from tests.integration import builders
from tests.testing import TestCase
from tests.testing import require

BACKEND = keras.backend.backend()
TOLERANCE = 1e-5
BATCH = 3
EXTRA = "the `export` extra: pip install -e '.[export]'"
FORMATS = ["tf_saved_model", "onnx", "litert", "torch"]
# What Keras 3.15 cannot export (not a missing package): a plain skip, in CI too.
UNSUPPORTED = {
    ("tf_saved_model", "torch"): (
        "tf_saved_model on torch goes through torch_xla's StableHLO bridge: "
        "torch_xla has no build for torch 2.13 (the latest, 2.9, needs torch "
        "2.9), and Keras 3.15 passes torch.export a dynamic_shapes structure "
        "it rejects"
    ),
    ("litert", "jax"): "Keras exports LiteRT from TensorFlow and torch only",
    ("torch", "tensorflow"): "format='torch' needs the torch backend",
    ("torch", "jax"): "format='torch' needs the torch backend",
}
# Where Keras exports but our extra cannot carry the package: litert-torch pins
# xdsl, which pins typing-extensions<4.13, below what jax2onnx's chex and
# anyio need. Runs when it is installed by hand, else a plain skip.
NOT_IN_EXTRA = {
    ("litert", "torch"): "litert_torch",
}


# ------------------------------------------------------------------ models
def residual_cnn():
    """Conv/BN/ReLU with identity and projection residual Adds, ReLU6, a
    depthwise conv: every BN folds into a conv bias, nothing merges."""
    return builders.residual_cnn(), []


def locked_cnn():
    """The same CNN made collapsible, three activations locked: a 1x1 -> 3x3
    "same" merge with its border-aware bias and absorbed identity residual,
    a strided 3x3 -> 1x1 merge, and a 1x1 -> depthwise merge."""
    model, layers = builders.collapsible(builders.residual_cnn())
    return model, [layers[1], layers[3], layers[5]]


def prelu_net():
    """`CollapsiblePReLU`s: one at alpha 1 (linear, so its convs merge), one
    at alpha 0.25 (emitted as a plain `PReLU`)."""
    inputs = keras.Input((10, 10, 3))
    x = builders.make(keras.layers.Conv2D, 12, 3, use_bias=False)(inputs)
    one = keras.initializers.Constant(1.0)
    x = kc.CollapsiblePReLU(alpha_initializer=one)(builders.bn(x, 120))
    x = builders.make(keras.layers.Conv2D, 12, 1)(x)
    quarter = keras.initializers.Constant(0.25)
    x = kc.CollapsiblePReLU(alpha_initializer=quarter, shared_axes=[1, 2])(
        builders.bn(x, 121)
    )
    x = builders.make(keras.layers.Conv2D, 8, 3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = builders.make(keras.layers.Dense, 5)(x)
    return keras.Model(inputs, outputs, name="prelu_net"), []


def mlp():
    """Dense/BN/ReLU, GELU, SiLU with Dropout; the GELU locked, so two Dense
    layers merge."""
    model, layers = builders.collapsible(builders.mlp())
    return model, [layers[1]]


def leaky_residual():
    """Conv2D -> BN -> Add -> LeakyReLU(0.01): folding the BN gives
    Conv2D(bias) -> Add -> LeakyReLU, which TensorFlow 2.21 with oneDNN
    compiles with a wrong slope (predict, SavedModel); the surgery must emit
    a form every exported artifact computes right."""
    inputs = keras.Input((8, 8, 4))
    x = builders.make(keras.layers.Conv2D, 8, 3, padding="same", use_bias=False)(inputs)
    x0 = keras.layers.ReLU()(builders.bn(x, 130))
    h = builders.make(keras.layers.Conv2D, 8, 3, padding="same", use_bias=False)(x0)
    h = keras.layers.ReLU()(builders.bn(h, 131))
    h = builders.make(keras.layers.Conv2D, 8, 3, padding="same", use_bias=False)(h)
    x = keras.layers.Add()([x0, builders.bn(h, 132)])
    x = keras.layers.LeakyReLU(0.01)(x)
    outputs = builders.make(keras.layers.Conv2D, 3, 1)(x)
    return keras.Model(inputs, outputs, name="leaky_residual"), []


MODELS = {
    f.__name__: f for f in (residual_cnn, locked_cnn, prelu_net, mlp, leaky_residual)
}


class Case:
    """A model, its surgery result, inputs and the outputs to compare with."""

    def __init__(self, name):
        keras.utils.set_random_seed(sorted(MODELS).index(name))
        model, lock = MODELS[name]()
        if lock:
            kc.lock_linear(model, lock)
        self.model = model
        self.small, self.report = kc.surgery(model, return_report=True)
        rng = np.random.default_rng(7)
        shape = tuple(model.inputs[0].shape[1:])
        self.x = rng.standard_normal((BATCH, *shape)).astype("float32")
        # The original model, eagerly: what every artifact must compute.
        self.original = keras.ops.convert_to_numpy(model(self.x, training=False))
        self.predicted = self.small.predict(self.x, batch_size=BATCH, verbose=0)


@functools.cache
def case(name):
    # Built on first use, inside a test (after the suite's seeding); shared by
    # the formats so each model is built and operated on once per backend.
    return Case(name)


def relative_error(expected, actual):
    expected = np.asarray(expected, "float64")
    actual = np.asarray(actual, "float64")
    assert expected.shape == actual.shape, (expected.shape, actual.shape)
    return float(np.max(np.abs(expected - actual)) / np.max(np.abs(expected)))


def signature(model, batch=None):
    """The input signature Keras builds by itself, with batch size `batch`."""
    (tensor,) = model.inputs
    shape = (batch, *tensor.shape[1:])
    return [keras.InputSpec(shape=shape, dtype=tensor.dtype, name=tensor.name)]


# --------------------------------------------------------- export and run
def run_saved_model(model, tmp_path, x):
    tf = require("tensorflow", "format='tf_saved_model'; the `tensorflow` extra")
    path = str(tmp_path / "saved_model")
    model.export(path, format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(path)  # keep a reference while it runs
    (spec,) = loaded.serve.concrete_functions[0].structured_input_signature[0]
    assert spec.shape[0] is None  # dynamic batch
    return loaded.serve(tf.constant(x)).numpy()


def run_onnx(model, tmp_path, x):
    require("onnx", f"format='onnx'; {EXTRA}")
    exporter = {"tensorflow": "tf2onnx", "jax": "jax2onnx", "torch": "onnxscript"}
    require(exporter[BACKEND], f"format='onnx' on {BACKEND}; {EXTRA}")
    ort = require("onnxruntime", f"running ONNX files; {EXTRA}")
    path = str(tmp_path / "model.onnx")
    # Keras 3.15 refuses a Functional model it has never `__call__`ed ("The
    # model provided has never called"), e.g. one loaded from `.keras`, or a
    # surgery result on JAX, whose verification runs compiled. An explicit
    # input signature (the one Keras would build) skips that check.
    model.export(path, format="onnx", verbose=False, input_signature=signature(model))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert isinstance(inp.shape[0], str), inp.shape  # symbolic batch
    (out,) = session.run(None, {inp.name: x})
    return out


def run_litert(model, tmp_path, x):
    if BACKEND == "tensorflow":
        require("tensorflow", "format='litert'; the `tensorflow` extra")
        sig = None  # dynamic batch: resized at run time
    else:
        require("litert_torch", "format='litert' on torch")
        sig = signature(model, batch=len(x))  # torch: static shapes only
    interpreter_module = require(
        "ai_edge_litert.interpreter", f"running .tflite files; {EXTRA}"
    )
    path = str(tmp_path / "model.tflite")
    model.export(path, format="litert", verbose=False, input_signature=sig)
    interpreter = interpreter_module.Interpreter(model_path=path)
    (inp,) = interpreter.get_input_details()
    if sig is None:
        assert inp["shape_signature"][0] == -1, inp["shape_signature"]
        interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    return interpreter.get_tensor(out["index"])


def run_torch(model, tmp_path, x):
    import torch

    path = str(tmp_path / "model.pt2")
    # Without `dynamic_shapes` the batch size is fixed at 1.
    model.export(
        path,
        format="torch",
        verbose=False,
        dynamic_shapes={0: torch.export.Dim("batch")},
    )
    program = torch.export.load(path)
    with torch.no_grad():
        return program.module()(torch.from_numpy(x)).numpy()


RUNNERS = {
    "tf_saved_model": run_saved_model,
    "onnx": run_onnx,
    "litert": run_litert,
    "torch": run_torch,
}


def skip_unless_exportable(fmt):
    reason = UNSUPPORTED.get((fmt, BACKEND))
    if reason:
        pytest.skip(f"{fmt} x {BACKEND}: {reason} (see docs/export.md)")
    module = NOT_IN_EXTRA.get((fmt, BACKEND))
    if module:
        try:
            __import__(module)
        except ImportError:
            pytest.skip(
                f"{fmt} x {BACKEND} needs {module}, which the `export` extra "
                "cannot carry (see docs/export.md)"
            )


# ------------------------------------------------------------------- tests
class TestExport(TestCase):
    @pytest.mark.parametrize("name", sorted(MODELS))
    def test_surgery_result_predicts_what_the_model_computes(self, name):
        # The oracle of the export tests: compiled `predict` of the result
        # against the original model run eagerly.
        c = case(name)
        error = relative_error(c.original, c.predicted)
        assert error <= TOLERANCE, f"predict vs original eager: {error:.3g}"

    def test_models_exercise_the_surgery(self):
        layers = {
            name: [type(layer).__name__ for layer in case(name).small.layers]
            for name in MODELS
        }
        assert "BatchNormalization" not in sum(layers.values(), [])
        assert case("locked_cnn").report.count("merge") >= 2
        assert case("locked_cnn").report.count("absorb_residual") >= 1
        assert case("mlp").report.count("merge") >= 1
        assert case("prelu_net").report.count("merge") >= 1
        assert "PReLU" in layers["prelu_net"]
        assert "Add" in layers["leaky_residual"]

    @pytest.mark.parametrize("fmt", FORMATS)
    @pytest.mark.parametrize("name", sorted(MODELS))
    def test_exported_artifact_computes_the_original(self, name, fmt, tmp_path):
        skip_unless_exportable(fmt)
        c = case(name)
        out = RUNNERS[fmt](c.small, tmp_path, c.x)
        vs_predict = relative_error(c.predicted, out)
        vs_original = relative_error(c.original, out)
        assert vs_predict <= TOLERANCE and vs_original <= TOLERANCE, (
            f"{fmt} on {BACKEND}, {name}: relative error {vs_predict:.3g} vs the "
            f"result's predict, {vs_original:.3g} vs the original model (eager); "
            f"layers: {[type(layer).__name__ for layer in c.small.layers]}"
        )
