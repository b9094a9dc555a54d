"""ON/OFF statistics over data against a NumPy oracle on pre-activations
extracted independently (a plain Keras model up to each activation's input)."""

import sys

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse.graph.probe import ProbeModel
from keras_collapse.scores.statistics import binary_entropy
from tests.testing import TestCase
from tests.testing import require

layers = keras.layers


def oracle(z, axis=-1):
    """p_on, mean, std and entropy of pre-activations `z`, per channel."""
    z = np.moveaxis(np.asarray(z, np.float64), axis, -1).reshape(-1, z.shape[axis])
    p = (z > 0).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return p, z.mean(0), z.std(0), float(np.nan_to_num(h).mean())


def dense_model():
    inputs = keras.Input((5,))
    h = layers.Dense(6, name="d1")(inputs)
    h = kc.CollapsiblePReLU(name="a1")(h)
    h = layers.Dense(4, name="d2")(h)
    blend = keras.initializers.Constant(0.3)
    h = kc.CollapsibleActivation("gelu", alpha_initializer=blend, name="a2")(h)
    return keras.Model(inputs, layers.Dense(2)(h))


def conv_model():
    inputs = keras.Input((7, 7, 3))
    h = layers.Conv2D(5, 3, padding="same")(inputs)
    h = layers.BatchNormalization(name="bn")(h)
    h = kc.CollapsibleActivation("relu6", name="a1")(h)
    h = layers.MaxPooling2D()(h)
    h = kc.CollapsiblePReLU(name="a2", shared_axes=[1, 2])(layers.Conv2D(4, 1)(h))
    return keras.Model(inputs, layers.GlobalAveragePooling2D()(h))


def multi_input_model():
    a, b = keras.Input((4,), name="left"), keras.Input((3,), name="right")
    h = layers.Concatenate()([layers.Dense(3)(a), layers.Dense(3)(b)])
    h = kc.CollapsiblePReLU(name="a1")(h)
    return keras.Model([a, b], layers.Dense(1)(h))


def nested_model():
    inner_in = keras.Input((6,))
    inner = keras.Model(
        inner_in, kc.CollapsiblePReLU(name="inner_act")(layers.Dense(4)(inner_in))
    )
    inputs = keras.Input((5,))
    h = kc.CollapsibleActivation("silu", name="outer_act")(layers.Dense(6)(inputs))
    return keras.Model(inputs, layers.Dense(2)(inner(h))), inner


def pre_activations(model, name, x):
    """The input of activation `name`, from a plain Keras sub-model."""
    layer = model.get_layer(name)
    return keras.Model(model.inputs, layer.input).predict(x, verbose=0)


class TestOracle(TestCase):
    def check(self, stats, name, z, axis=-1, atol=1e-5):
        p, mean, std, entropy = oracle(z, axis)
        s = stats[name]
        np.testing.assert_allclose(s.p_on, p, atol=1e-12)
        np.testing.assert_allclose(s.mean, mean, atol=atol)
        np.testing.assert_allclose(s.std, std, atol=atol)
        assert s.entropy == pytest.approx(entropy, abs=1e-9)
        d = stats.as_dict()[name]
        assert d["entropy"] == s.entropy and d["p_on"] == s.p_on.tolist()

    def test_dense_with_a_blended_gelu(self):
        model = dense_model()
        x = self.random_inputs((300, 5))
        stats = kc.activation_statistics(model, x, batch_size=64)
        assert stats.samples == 300 and [s.name for s in stats] == ["a1", "a2"]
        for name in ("a1", "a2"):
            self.check(stats, name, pre_activations(model, name, x))

    def test_conv_counts_every_position(self):
        model = conv_model()
        x = self.random_inputs((90, 7, 7, 3))
        stats = kc.activation_statistics(model, x, batch_size=32)
        z1 = pre_activations(model, "a1", x)
        self.check(stats, "a1", z1)
        self.check(stats, "a2", pre_activations(model, "a2", x))
        assert stats["a1"].channels == 5

    def test_multi_input_as_list_and_dict(self):
        model = multi_input_model()
        x = [self.random_inputs((50, 4)), self.random_inputs((50, 3), seed=1)]
        z = pre_activations(model, "a1", x)
        self.check(kc.activation_statistics(model, x), "a1", z)
        named = {"left": x[0], "right": x[1]}
        self.check(kc.activation_statistics(model, named), "a1", z)

    def test_nested_model(self):
        model, inner = nested_model()
        x = self.random_inputs((80, 5))
        stats = kc.activation_statistics(model, x)
        self.check(stats, "outer_act", pre_activations(model, "outer_act", x))
        h = keras.Model(model.inputs, model.get_layer("outer_act").output)
        z_inner = pre_activations(inner, "inner_act", h.predict(x, verbose=0))
        self.check(stats, "inner_act", z_inner)

    def test_labels_are_ignored_and_layers_chosen(self):
        model = dense_model()
        x = self.random_inputs((40, 5))
        stats = kc.activation_statistics(model, (x, np.zeros(40)), layers=["a2"])
        assert [s.name for s in stats] == ["a2"]
        self.check(stats, "a2", pre_activations(model, "a2", x))

    def test_max_samples(self):
        model = dense_model()
        x = self.random_inputs((100, 5))
        stats = kc.activation_statistics(model, x, batch_size=16, max_samples=37)
        assert stats.samples == 37
        self.check(stats, "a1", pre_activations(model, "a1", x[:37]))

    def test_training_mode_uses_batch_statistics_and_restores_the_model(self):
        model = conv_model()
        x = self.random_inputs((64, 7, 7, 3), scale=3.0) + 2.0
        before = [w.copy() for w in model.get_weights()]
        stats = kc.activation_statistics(model, x, batch_size=64, training=True)
        # One batch: BN normalizes with the batch's own statistics.
        bn = model.get_layer("bn")
        conv_out = keras.Model(model.inputs, bn.input).predict(x, verbose=0)
        mu, var = conv_out.mean((0, 1, 2)), conv_out.var((0, 1, 2))
        gamma, beta = (keras.ops.convert_to_numpy(w) for w in (bn.gamma, bn.beta))
        z = (conv_out - mu) / np.sqrt(var + bn.epsilon) * gamma + beta
        self.check(stats, "a1", z, atol=1e-4)
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_binary_entropy(self):
        np.testing.assert_allclose(binary_entropy([0.0, 1.0, 0.5]), [0.0, 0.0, 1.0])
        assert binary_entropy(0.25) == pytest.approx(0.8112781244591328)


class TestOnePass(TestCase):
    def test_one_batch_read_and_one_probe_call_per_batch(self, monkeypatch):
        model = conv_model()
        calls = []
        original = ProbeModel.predict_on_batch

        def counting(self, x):
            calls.append(len(x))
            return original(self, x)

        monkeypatch.setattr(ProbeModel, "predict_on_batch", counting)
        reads = []

        class Counting(keras.utils.PyDataset):
            def __len__(self):
                return 3

            def __getitem__(self, i):
                reads.append(i)
                return np.full((10, 7, 7, 3), i, "float32")

        stats = kc.activation_statistics(model, Counting())
        assert reads == [0, 1, 2] and calls == [10, 10, 10]
        assert stats.samples == 30 and len(stats) == 2


class TestDataKinds(TestCase):
    def test_generator_needs_max_samples(self):
        model = dense_model()

        def endless():
            while True:
                yield self.random_inputs((8, 5))

        with pytest.raises(ValueError, match="max_samples"):
            kc.activation_statistics(model, endless())
        stats = kc.activation_statistics(model, endless(), max_samples=20)
        assert stats.samples == 20

    def test_list_of_batches(self):
        model = dense_model()
        x = self.random_inputs((30, 5))
        batches = [(x[:10], np.zeros(10)), (x[10:], np.zeros(20))]
        stats = kc.activation_statistics(model, batches)
        assert stats.samples == 30
        TestOracle().check(stats, "a1", pre_activations(model, "a1", x))

    def test_tf_data_and_torch_loader(self):
        model = dense_model()
        x = self.random_inputs((24, 5))
        expected = kc.activation_statistics(model, x)["a1"].mean
        tf = require("tensorflow", "tf.data input")
        ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(24))).batch(7)
        np.testing.assert_allclose(
            kc.activation_statistics(model, ds)["a1"].mean, expected, atol=1e-6
        )
        with pytest.raises(ValueError, match="endless"):
            kc.activation_statistics(model, ds.repeat())
        torch = require("torch", "DataLoader input")
        loader = torch.utils.data.DataLoader(torch.from_numpy(x), batch_size=5)
        np.testing.assert_allclose(
            kc.activation_statistics(model, loader)["a1"].mean, expected, atol=1e-6
        )


class TestIntegerData(TestCase):
    def test_uint8_and_int64_inputs_as_predict_reads_them(self):
        # Issue 23: integer data reached the Conv uncast and failed.
        images = np.random.default_rng(0).integers(0, 8, (20, 7, 7, 3))
        model = conv_model()
        for dtype in ("uint8", "int64"):
            stats = kc.activation_statistics(model, images.astype(dtype))
            want = pre_activations(model, "a1", images.astype("float32"))
            TestOracle().check(stats, "a1", want, atol=1e-4)


class TestBadInput(TestCase):
    def test_wrong_shape_names_both(self):
        with pytest.raises(ValueError, match=r"expected shape \(None, 5\).*\(4, 3\)"):
            kc.activation_statistics(dense_model(), np.zeros((4, 3), "float32"))

    def test_empty(self):
        with pytest.raises(ValueError, match="empty"):
            kc.activation_statistics(dense_model(), np.zeros((0, 5), "float32"))

    def test_non_finite(self):
        x = np.zeros((4, 5), "float32")
        x[2, 1] = np.nan
        with pytest.raises(ValueError, match="non-finite"):
            kc.activation_statistics(dense_model(), x)

    def test_no_collapsible_activation(self):
        inputs = keras.Input((3,))
        model = keras.Model(inputs, layers.Dense(2, activation="relu")(inputs))
        with pytest.raises(ValueError, match="make_collapsible"):
            kc.activation_statistics(model, np.zeros((2, 3), "float32"))

    def test_unknown_layer(self):
        with pytest.raises(ValueError, match="nope"):
            kc.activation_statistics(
                dense_model(), np.zeros((2, 5), "float32"), layers=["nope"]
            )

    def test_model_left_alone(self):
        model = conv_model()
        before = [w.copy() for w in model.get_weights()]
        kc.activation_statistics(model, self.random_inputs((20, 7, 7, 3)))
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)
        assert len(model.get_layer("a1")._inbound_nodes) == 1


class TestReport(TestCase):
    def stats(self):
        model = conv_model()
        return kc.activation_statistics(model, self.random_inputs((20, 7, 7, 3)))

    def test_table_and_gaussian_states(self):
        stats = self.stats()
        text = str(stats)
        assert "entropy" in text.lower() and "20 samples" in text
        row = next(line for line in text.splitlines() if line.startswith("a1"))
        assert f"{stats['a1'].entropy:.3f}" in row
        tlc = stats.gaussian_states()
        assert tlc.source == "data" and tlc["a1"].score is not None
        table = str(tlc)
        assert "Measured ON/OFF" in table and "Measured on" in table
        row = next(line for line in table.splitlines() if line.startswith("a1"))
        assert "20 samples" in row

    def test_plot_uses_the_shared_figure(self):
        require("matplotlib", "plot()")
        fig = self.stats().plot()
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["a1", "a2"]
        assert "always ON" in [t.get_text() for t in ax.get_legend().get_texts()]

    def test_plot_without_matplotlib(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
        with pytest.raises(ImportError, match=r"keras-collapse\[plot\]"):
            self.stats().plot()


class TestReplicaBlocks(TestCase):
    def test_moments_per_replica_merge_as_one_batch(self):
        # A model built in a tf.distribute scope returns one (4, C) block
        # per replica, stacked; a replica may get no rows.
        from keras_collapse.graph.channel_moments import Moments

        rng = np.random.default_rng(0)
        a, b = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))

        def block(x):
            if not len(x):
                return np.zeros((4, 3))
            mean = x.mean(0)
            return np.stack(
                [(x > 0).sum(0), np.full(3, len(x)), mean, ((x - mean) ** 2).sum(0)]
            )

        stacked = Moments()
        stacked.add(np.concatenate([block(a), block(b), block(a[:0])]))
        both = np.concatenate([a, b])
        np.testing.assert_allclose(stacked.mean, both.mean(0))
        np.testing.assert_allclose(stacked.variance, both.var(0))
        np.testing.assert_array_equal(stacked.on, (both > 0).sum(0))
