"""Models for the integration tests, and the checks every surgery result passes.

Real architectures get random weights and non-trivial BatchNormalization
statistics (`randomize_batchnorms`): with Keras' default statistics (mean 0,
variance 1, gamma 1, beta 0) a wrong fold can go unnoticed.
`SurgeryTestCase.check_surgery` is the oracle: the result must compute what
the linearized input model computes, on fresh random inputs, and keep its
promises on depth, activations, MACs and saving.
"""

import math

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.graph import Graph
from tests.testing import TestCase

TOLERANCE = 1e-5
# JAX compiles a random initializer for every new weight shape and an
# inference function for every model: building and checking a real
# architecture costs it 10-50 s, several times the other backends. There,
# those tests run with --run-large only.
SLOW_ON_JAX = [pytest.mark.large] if keras.backend.backend() == "jax" else []
# Random graphs per property test: fewer on JAX, where each costs ~2 s of
# compilation (three models' inference functions, new layers' initializers).
EXAMPLES = 6 if keras.backend.backend() == "jax" else 12


# ------------------------------------------------------------ BatchNorm stats
def batchnorm_layers(model):
    """Every BatchNormalization of `model`, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += batchnorm_layers(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
    return found


def randomize_batchnorm(layer, rng, dead=0.0):
    """gamma ~ U(0.5, 1.5), beta ~ N(0, 0.2), moving mean ~ N(0, 0.2), moving
    variance ~ U(0.5, 2); a fraction `dead` of the channels gets gamma = beta
    = 0 (a channel switched OFF, as TLC does)."""
    size = layer.moving_mean.shape[0]
    values = {
        "gamma": rng.uniform(0.5, 1.5, size),
        "beta": rng.normal(0.0, 0.2, size),
        "moving_mean": rng.normal(0.0, 0.2, size),
        "moving_variance": rng.uniform(0.5, 2.0, size),
    }
    off = rng.random(size) < dead
    values["gamma"][off] = values["beta"][off] = 0.0
    layer.set_weights(
        [values[v.path.split("/")[-1]].astype("float32") for v in layer.weights]
    )


def randomize_batchnorms(model, seed=0):
    """Gives every BatchNormalization of `model` random statistics.

    Returns:
        int, the number of BatchNormalization layers changed.
    """
    rng = np.random.default_rng(seed)
    layers = batchnorm_layers(model)
    for layer in layers:
        randomize_batchnorm(layer, rng)
    return len(layers)


def bn(x, seed, dead=0.0, **kwargs):
    """A BatchNormalization with random statistics, applied to `x`."""
    layer = keras.layers.BatchNormalization(**kwargs)
    y = layer(x)
    randomize_batchnorm(layer, np.random.default_rng(seed), dead)
    return y


@keras.saving.register_keras_serializable(package="keras_collapse_integration_tests")
class NumpyNormal(keras.initializers.Initializer):
    """Normal weights, standard deviation `sqrt(scale / fan_in)`, drawn by
    NumPy's global generator (seeded by `keras.utils.set_random_seed`).

    Keras' random initializers cost JAX a compilation per new shape (~0.5 s
    each, most of these tests' time there); a NumPy draw costs nothing.
    `depthwise=True` takes the fan-in of a depthwise kernel `[k.., C, m]`.
    """

    def __init__(self, scale=1.0, depthwise=False):
        self.scale = scale
        self.depthwise = depthwise

    def __call__(self, shape, dtype=None):
        fan_in = math.prod(shape[: -2 if self.depthwise else -1])
        values = np.random.normal(0.0, math.sqrt(self.scale / fan_in), shape)
        return keras.ops.convert_to_tensor(values, dtype=dtype or "float32")

    def get_config(self):
        return {"scale": self.scale, "depthwise": self.depthwise}


def make(cls, *args, **kwargs):
    """`cls(*args, **kwargs)` with NumPy-drawn kernel and bias (biases
    N(0, 0.2): a fold or merge that drops a bias shows)."""
    key = (
        "depthwise_initializer" if "Depthwise" in cls.__name__ else "kernel_initializer"
    )
    kwargs.setdefault(key, NumpyNormal(depthwise="Depthwise" in cls.__name__))
    kwargs.setdefault("bias_initializer", NumpyNormal(scale=0.04))
    return cls(*args, **kwargs)


# ----------------------------------------------------------- hand-built graphs
def residual_cnn():
    """Identity and projection residuals, an inverted-residual block with a
    depthwise conv, and a 1x1 -> 3x3 "same" pair (the bias-map merge)."""
    inputs = keras.Input((12, 12, 3))
    x = make(keras.layers.Conv2D, 16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(bn(x, 1))
    # Identity residual: 1x1 expand, 3x3 "same" back.
    h = make(keras.layers.Conv2D, 32, 1, use_bias=False)(x)
    h = keras.layers.ReLU()(bn(h, 2))
    h = make(keras.layers.Conv2D, 16, 3, padding="same", use_bias=False)(h)
    x = keras.layers.ReLU()(keras.layers.Add()([x, bn(h, 3)]))
    # Projection residual with stride 2.
    h = make(keras.layers.Conv2D, 24, 3, strides=2, padding="same", use_bias=False)(x)
    h = keras.layers.ReLU()(bn(h, 4))
    h = make(keras.layers.Conv2D, 24, 1, use_bias=False)(h)
    s = make(keras.layers.Conv2D, 24, 1, strides=2, use_bias=False)(x)
    x = keras.layers.ReLU()(keras.layers.Add()([bn(s, 5), bn(h, 6)]))
    # Inverted residual: 1x1 expand, depthwise 3x3, 1x1 project.
    h = make(keras.layers.Conv2D, 72, 1, use_bias=False)(x)
    h = keras.layers.ReLU(6.0)(bn(h, 7))
    h = make(keras.layers.DepthwiseConv2D, 3, padding="same", use_bias=False)(h)
    h = keras.layers.ReLU(6.0)(bn(h, 8))
    h = make(keras.layers.Conv2D, 24, 1, use_bias=False)(h)
    x = keras.layers.Add()([x, bn(h, 9)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = make(keras.layers.Dense, 10)(x)
    return keras.Model(inputs, outputs, name="residual_cnn")


def _conv_unit(filters, seed, name):
    inputs = keras.Input((None, None, filters))
    x = make(keras.layers.Conv2D, filters, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.Activation("gelu")(bn(x, seed))
    x = make(keras.layers.Conv2D, filters, 1, use_bias=False)(x)
    return keras.Model(inputs, bn(x, seed + 1), name=name)


def nested_net():
    """Models inside models, two levels deep, one of them a Sequential."""
    unit = _conv_unit(8, 10, "unit")
    seq = keras.Sequential(
        [
            keras.Input((None, None, 8)),
            make(keras.layers.Conv2D, 8, 1),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            make(keras.layers.Conv2D, 8, 1),
        ],
        name="seq",
    )
    randomize_batchnorms(seq, seed=20)
    inner_in = keras.Input((None, None, 8))
    inner_out = keras.layers.Add()([inner_in, unit(inner_in)])
    inner = keras.Model(inner_in, seq(keras.layers.ReLU()(inner_out)), name="inner")
    inputs = keras.Input((10, 10, 3))
    x = make(keras.layers.Conv2D, 8, 3, use_bias=False)(inputs)
    x = keras.layers.ReLU()(bn(x, 30))
    x = keras.layers.ReLU()(inner(x))
    x = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, make(keras.layers.Dense, 4)(x), name="nested_net")


def multi_io_net():
    """Dict inputs and outputs, a tower shared by two inputs (each of its
    layers called twice), a vector branch and an image-shaped output."""
    tower_in = keras.Input((8, 8, 3))
    t = make(keras.layers.Conv2D, 12, 3, use_bias=False)(tower_in)
    t = keras.layers.ReLU()(bn(t, 40))
    t = make(keras.layers.Conv2D, 12, 1, use_bias=False)(t)
    t = keras.layers.ReLU()(bn(t, 41))
    tower = keras.Model(tower_in, t, name="tower")
    left = keras.Input((8, 8, 3), name="left")
    right = keras.Input((8, 8, 3), name="right")
    meta = keras.Input((5,), name="meta")
    fl, fr = tower(left), tower(right)
    m = make(keras.layers.Dense, 16)(meta)
    m = keras.layers.Activation("silu")(bn(m, 42))
    m = make(keras.layers.Dense, 12)(m)
    pooled = keras.layers.Concatenate()(
        [
            keras.layers.GlobalAveragePooling2D()(fl),
            keras.layers.GlobalAveragePooling2D()(fr),
            m,
        ]
    )
    h = make(keras.layers.Dense, 32)(pooled)
    h = keras.layers.ReLU()(bn(h, 43))
    h = keras.layers.Dropout(0.2)(h)
    logits = make(keras.layers.Dense, 3, name="logits")(h)
    diff = keras.layers.Subtract()([fl, fr])
    aux = make(keras.layers.Conv2D, 2, 1, name="aux")(keras.layers.ELU()(diff))
    return keras.Model(
        {"left": left, "right": right, "meta": meta},
        {"logits": logits, "aux": aux},
        name="multi_io_net",
    )


def mlp():
    """Dense -> BN -> act -> Dropout stacks: Dense∘Dense merges."""
    inputs = keras.Input((20,))
    x = inputs
    for i, (units, act) in enumerate([(64, "relu"), (48, "gelu"), (32, "silu")]):
        x = make(keras.layers.Dense, units)(x)
        x = keras.layers.Activation(act)(bn(x, 50 + i))
        x = keras.layers.Dropout(0.1)(x)
    return keras.Model(inputs, make(keras.layers.Dense, 5)(x), name="mlp")


def conv1d_net():
    """Conv1D "valid" stacks (valid∘valid merges) with a depthwise conv."""
    inputs = keras.Input((24, 4))
    x = make(keras.layers.Conv1D, 8, 3, use_bias=False)(inputs)
    x = keras.layers.ReLU()(bn(x, 60))
    x = make(keras.layers.Conv1D, 8, 3, strides=2)(x)
    x = keras.layers.LeakyReLU(0.1)(bn(x, 61))
    x = make(keras.layers.DepthwiseConv1D, 3, depth_multiplier=2)(x)
    x = keras.layers.ReLU()(bn(x, 62))
    x = make(keras.layers.Conv1D, 6, 1)(x)
    x = keras.layers.ReLU()(bn(x, 63))
    x = make(keras.layers.Conv1D, 6, 3)(x)
    return keras.Model(inputs, x, name="conv1d_net")


def small_vgg():
    """A VGG with BatchNormalization: 3x3 "same" conv pairs, then Dense."""
    inputs = keras.Input((16, 16, 3))
    x = inputs
    seed = 70
    for filters in (16, 32):
        for _ in range(2):
            x = make(keras.layers.Conv2D, filters, 3, padding="same", use_bias=False)(x)
            x = keras.layers.ReLU()(bn(x, seed))
            seed += 1
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    for units in (64, 64):
        x = make(keras.layers.Dense, units)(x)
        x = keras.layers.ReLU()(bn(x, seed))
        x = keras.layers.Dropout(0.5)(x)
        seed += 1
    return keras.Model(inputs, make(keras.layers.Dense, 10)(x), name="small_vgg")


def sequential_cnn():
    """A Sequential model, not a functional one."""
    model = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            make(keras.layers.Conv2D, 8, 3),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            make(keras.layers.Conv2D, 8, 1),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            make(keras.layers.Dense, 4),
        ],
        name="sequential_cnn",
    )
    randomize_batchnorms(model, seed=80)
    return model


def gated_net():
    """PReLUs (per channel and shared), a squeeze-and-excitation gate (whose
    activations stay), raw `keras.ops` activations and a fused activation."""
    inputs = keras.Input((8, 8, 8))
    x = make(keras.layers.Conv2D, 8, 1)(inputs)
    x = keras.layers.PReLU(
        shared_axes=[1, 2], alpha_initializer=keras.initializers.Constant(0.2)
    )(bn(x, 90))
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = make(keras.layers.Conv2D, 2, 1, activation="relu")(s)
    s = make(keras.layers.Conv2D, 8, 1, activation="sigmoid")(s)
    x = keras.layers.Multiply()([x, s])
    x = make(keras.layers.Conv2D, 8, 1)(x)
    x = keras.ops.relu(bn(x, 91))
    x = make(keras.layers.DepthwiseConv2D, 3, padding="same")(x)
    x = keras.activations.silu(bn(x, 92))
    x = make(keras.layers.Conv2D, 6, 1, activation="relu6")(x)
    return keras.Model(inputs, make(keras.layers.Conv2D, 4, 1)(bn(x, 93)))


def token_mlp():
    """Integer inputs through an Embedding, a LayerNormalization, and a BN on
    the model input (folded into the Dense after it)."""
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(8, 12)(tokens)
    x = make(keras.layers.Dense, 24, activation="gelu")(x)
    x = make(keras.layers.Dense, 12)(x)
    x = keras.layers.LayerNormalization()(x)
    x = make(keras.layers.Dense, 16)(bn(x, 100, center=False))
    x = keras.layers.ReLU()(bn(x, 101, scale=False))
    return keras.Model(tokens, make(keras.layers.Dense, 3)(x), name="token_mlp")


def unmergeable_convs():
    """Convs the surgery does not take apart (dilated, grouped, separable,
    transposed, channels_first): they must come through unchanged."""
    inputs = keras.Input((10, 10, 4))
    x = make(keras.layers.Conv2D, 8, 3, dilation_rate=2, padding="same")(inputs)
    x = keras.layers.ReLU()(bn(x, 110))
    x = make(keras.layers.Conv2D, 8, 3, groups=2, padding="same")(x)
    x = keras.layers.ReLU()(bn(x, 111))
    x = keras.layers.SeparableConv2D(
        8,
        3,
        padding="same",
        depthwise_initializer=NumpyNormal(depthwise=True),
        pointwise_initializer=NumpyNormal(),
        bias_initializer=NumpyNormal(scale=0.04),
    )(x)
    x = keras.layers.ReLU()(bn(x, 112))
    x = make(keras.layers.Conv2DTranspose, 4, 3, strides=2)(x)
    x = keras.layers.ReLU()(bn(x, 113))
    x = keras.layers.Permute((3, 1, 2))(x)
    x = make(keras.layers.Conv2D, 6, 3, data_format="channels_first")(x)
    x = keras.layers.ReLU()(bn(x, 114, axis=1))
    return keras.Model(inputs, make(keras.layers.Conv2D, 3, 1)(x))


# ------------------------------------------------------------------- locking
def collapsible(model):
    """`model` with every default-kind activation made collapsible, and its
    collapsible activations in graph order."""
    new = kc.make_collapsible(model)
    return new, kc.collapsible_layers(new)


def applications(model, layers):
    """How often the layers are applied in `model`'s graph (a layer of a
    shared tower counts once per call)."""
    ids = {id(layer) for layer in layers}
    return sum(id(n.layer) in ids for n in Graph.from_model(model).layer_nodes())


# -------------------------------------------------------------------- checks
def input_shapes(model, input_shape=None):
    """Each input's shape without the batch axis; `input_shape` gives the
    unknown sizes of a single-input model (32 without it, as `surgery`)."""
    shapes = [tuple(t.shape[1:]) for t in model.inputs]
    if input_shape is not None:
        (shape,) = shapes
        shapes = [tuple(d if d is not None else g for d, g in zip(shape, input_shape))]
    return [tuple(32 if d is None else d for d in shape) for shape in shapes]


def fresh_inputs(model, input_shape=None, batch=2, seed=97):
    """Random inputs in the structure `model` takes, not the surgery's own
    (another seed; the same batch size, so compiled calls are reused).
    Integer inputs (token ids) are drawn below the smallest `input_dim` of
    the model's Embeddings (8 without one)."""
    rng = np.random.default_rng(seed)
    arrays = []
    vocab = min(
        [
            layer.input_dim
            for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.Embedding)
        ]
        or [8]
    )
    for tensor, shape in zip(model.inputs, input_shapes(model, input_shape)):
        if "int" in keras.backend.standardize_dtype(tensor.dtype):
            arrays.append(rng.integers(0, vocab, (batch, *shape)).astype(tensor.dtype))
        else:
            arrays.append(rng.standard_normal((batch, *shape)).astype("float32"))
    if len(arrays) == 1:
        return arrays[0]
    if isinstance(model.input, dict):
        return dict(zip([t.name for t in model.inputs], arrays))
    return arrays


def outputs_of(model, inputs, compiled=False):
    """The model's outputs at inference, as a flat list of NumPy arrays;
    `compiled`: through `predict_on_batch` on every backend."""
    # JAX runs eager ops one by one, each compiled on first use (~30 s for a
    # ResNet50): one compiled call is far quicker there. Elsewhere eager is.
    if compiled or keras.backend.backend() == "jax":
        out = model.predict_on_batch(inputs)
    else:
        out = model(inputs, training=False)
    if isinstance(out, dict):
        out = [out[k] for k in sorted(out)]
    return [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(out)]


def relative_error(expected, actual):
    """`max |a - b| / max |a|`, the worst over the outputs, in float64."""
    assert len(expected) == len(actual)
    worst = 0.0
    for a, b in zip(expected, actual):
        assert a.shape == b.shape, (a.shape, b.shape)
        a, b = a.astype("float64"), b.astype("float64")
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
        worst = max(worst, np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12))
    return worst


class SurgeryTestCase(TestCase):
    """`check_surgery`: the properties every surgery result must have."""

    def check_surgery(self, model, tmp_path, lock=(), input_shape=None, **kwargs):
        """Locks `lock` in `model`, runs the surgery and checks the result.

        Args:
            model: the `keras.Model` to operate on; only `lock` changes in it.
            tmp_path: folder for the `.keras` round trip.
            lock: collapsible activations of `model` to lock linear first.
            input_shape: sizes for the model's unknown input axes.
            **kwargs: more arguments of `keras_collapse.surgery`.

        Checked: the result computes what the locked model computes (the
        report's deviation and an own check on other inputs), the input model
        keeps its weights and layers, the applications of the locked layers
        are the activations that disappear, depth and MACs do not grow, and
        the result reloads from `.keras` with the same outputs.

        Returns:
            `(result, report)`.
        """
        locked = [layer for layer in lock if not layer.is_linear]
        removed = applications(model, locked)
        unlocked_stats = kc.model_stats(model, input_shape=input_shape)
        if locked:
            kc.lock_linear(model, locked)
        weights = [w.copy() for w in model.get_weights()]
        layers = [layer.name for layer in model.layers]
        x = fresh_inputs(model, input_shape)

        result, report = kc.surgery(
            model, return_report=True, input_shape=input_shape, **kwargs
        )

        assert report.deviation is not None and report.deviation <= TOLERANCE
        expected, actual = outputs_of(model, x), outputs_of(result, x)
        assert relative_error(expected, actual) <= TOLERANCE, report
        # The compiled path (`predict`, `export`) computes the same.
        compiled = outputs_of(result, x, compiled=True)
        assert relative_error(expected, compiled) <= TOLERANCE, "compiled path"
        # The outside is kept: names and dtypes of inputs and outputs.
        assert result.output_names == getattr(
            model, "output_names", [model.layers[-1].name]
        )
        assert [t.name for t in result.inputs] == [t.name for t in model.inputs]
        assert [t.dtype for t in result.outputs] == [t.dtype for t in model.outputs]
        assert [layer.name for layer in model.layers] == layers
        after_weights = model.get_weights()
        assert len(after_weights) == len(weights)
        for before, after in zip(weights, after_weights):
            np.testing.assert_array_equal(before, after)
        assert all(layer.is_locked for layer in locked)

        assert report.before == kc.model_stats(model, input_shape=input_shape)
        assert report.before.activations == unlocked_stats.activations - removed
        assert report.after.activations == report.before.activations
        assert report.after.depth <= report.before.depth
        # BatchNormalization counts 0 MACs: `before` prices the folded model.
        assert report.after.macs <= report.before.macs

        loaded = self.save_and_load(result, tmp_path)
        np.testing.assert_allclose(
            np.concatenate([o.ravel() for o in outputs_of(loaded, x)]),
            np.concatenate([o.ravel() for o in actual]),
            rtol=1e-6,
            atol=1e-6,
        )
        return result, report
