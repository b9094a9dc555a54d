"""Property-based tests: `surgery` on random small graphs.

Each example is a random chain of blocks (Conv, DepthwiseConv, Dense on the
channel axis, BatchNormalization with random statistics and some channels
switched OFF, collapsible activations locked, at alpha 1, 0 or in between,
Dropout, residual `Add`s and `Concatenate`s around shape-keeping branches),
on a small 1D or 2D input whose spatial size the model may not know; alphas
shared or one per channel / position; an identity layer at the output;
token ids through an `Embedding` of a random (small) vocabulary; the same
graphs under a mixed-precision policy. Whatever the graph, an exact surgery
must not raise, must compute what the graph computes (eagerly and
compiled), must remove exactly the linear activations, must keep the output
names and dtypes, and must not add depth or MACs
(`SurgeryTestCase.check_surgery`).
"""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_collapse as kc
from tests.integration import builders
from tests.integration.builders import make

ACTIVATIONS = ["relu", "relu6", "gelu", "silu", "leaky_relu", "elu", "tanh", "sigmoid"]
# How an activation is left: "locked" and "one" (alpha = 1) are linear.
ACTIVATION_MODES = ["locked", "one", "zero", "between"]
LINEAR_MODES = ("locked", "one")

conv = st.fixed_dictionaries(
    {
        "kind": st.just("conv"),
        "filters": st.sampled_from([3, 4, 6]),
        "kernel": st.sampled_from([1, 3]),
        "padding": st.sampled_from(["valid", "same"]),
        "stride": st.sampled_from([1, 2]),
        "bias": st.booleans(),
    }
)
depthwise = st.fixed_dictionaries(
    {
        "kind": st.just("depthwise"),
        "kernel": st.sampled_from([1, 3]),
        "padding": st.sampled_from(["valid", "same"]),
        "stride": st.sampled_from([1, 2]),
        "multiplier": st.sampled_from([1, 2]),
        "bias": st.booleans(),
    }
)
dense = st.fixed_dictionaries(
    {
        "kind": st.just("dense"),
        "units": st.sampled_from([3, 4, 6]),
        "bias": st.booleans(),
    }
)
batchnorm = st.fixed_dictionaries(
    {
        "kind": st.just("bn"),
        "seed": st.integers(0, 2**16),
        "dead": st.sampled_from([0.0, 0.0, 0.5]),
    }
)
activation = st.fixed_dictionaries(
    {
        "kind": st.just("act"),
        "activation": st.sampled_from(ACTIVATIONS),
        "mode": st.sampled_from(ACTIVATION_MODES),
        "alpha": st.floats(0.05, 0.95),
        # One alpha for all, one per channel, or one per position.
        "shared": st.sampled_from(["all", "all", "channel", "none"]),
    }
)
dropout = st.fixed_dictionaries({"kind": st.just("dropout")})
# Inside a residual branch: blocks that keep the shape (stride 1, "same",
# channels unchanged).
keeping = st.one_of(
    st.fixed_dictionaries(
        {
            "kind": st.just("conv"),
            "filters": st.none(),
            "kernel": st.sampled_from([1, 3]),
            "padding": st.just("same"),
            "stride": st.just(1),
            "bias": st.booleans(),
        }
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("depthwise"),
            "kernel": st.sampled_from([1, 3]),
            "padding": st.just("same"),
            "stride": st.just(1),
            "multiplier": st.just(1),
            "bias": st.booleans(),
        }
    ),
    st.fixed_dictionaries(
        {"kind": st.just("dense"), "units": st.none(), "bias": st.booleans()}
    ),
    batchnorm,
    activation,
)
residual = st.fixed_dictionaries(
    {
        "kind": st.just("residual"),
        "branch": st.lists(keeping, min_size=1, max_size=4),
        "shortcut": st.sampled_from(["identity", "pointwise"]),
    }
)
# Concatenate([x, branch(x)]): a reader that ties channels to their position.
concat = st.fixed_dictionaries(
    {"kind": st.just("concat"), "branch": st.lists(keeping, min_size=1, max_size=3)}
)
block = st.one_of(
    conv, depthwise, dense, batchnorm, activation, dropout, residual, concat
)
graphs = st.fixed_dictionaries(
    {
        "rank": st.sampled_from([1, 2]),
        # Spatial sizes unknown to the model (None), given to the surgery.
        "unknown_size": st.booleans(),
        "blocks": st.lists(block, min_size=1, max_size=7),
        "head": st.sampled_from(["none", "pool", "flatten"]),
        # An identity layer at the output: removed, its name kept.
        "tail": st.sampled_from(["none", "none", "dropout", "identity", "linear"]),
        "seed": st.integers(0, 2**16),
    }
)
# Token ids (int32) through an Embedding, then 1D blocks.
token_graphs = st.fixed_dictionaries(
    {
        "rank": st.just(1),
        "unknown_size": st.just(False),
        "tokens": st.sampled_from([3, 5, 50]),
        "blocks": st.lists(block, min_size=1, max_size=5),
        "head": st.sampled_from(["none", "pool"]),
        "tail": st.sampled_from(["none", "dropout"]),
        "seed": st.integers(0, 2**16),
    }
)

# Conv/Depthwise -> BatchNorm with channels switched OFF (gamma = beta = 0, as
# TLC does) -> activation, optionally inside an identity residual: the stacks
# where dead channels are cut and 1x1 -> k x k merges need a bias map.
stage = st.fixed_dictionaries(
    {
        "layer": st.one_of(conv, depthwise),
        "dead": st.sampled_from([0.3, 0.6]),
        "seed": st.integers(0, 2**16),
        "activation": st.sampled_from(["relu", "relu6", "gelu", "sigmoid"]),
        "mode": st.sampled_from(["locked", "locked", "zero"]),
        "residual": st.booleans(),
    }
)


def _stage_blocks(stage):
    layer = dict(stage["layer"])
    if stage["residual"]:  # the branch must keep the shape
        layer.update(padding="same", stride=1)
        if layer["kind"] == "conv":
            layer["filters"] = None
        else:
            layer["multiplier"] = 1
    body = [
        layer,
        {"kind": "bn", "seed": stage["seed"], "dead": stage["dead"]},
        {
            "kind": "act",
            "activation": stage["activation"],
            "mode": stage["mode"],
            "alpha": 0.0,
        },
    ]
    if stage["residual"]:
        return [{"kind": "residual", "branch": body, "shortcut": "identity"}]
    return body


stacks = st.fixed_dictionaries(
    {
        "rank": st.sampled_from([1, 2]),
        "unknown_size": st.just(False),
        "blocks": st.lists(stage, min_size=1, max_size=5).map(
            lambda stages: [b for s in stages for b in _stage_blocks(s)]
        ),
        "head": st.sampled_from(["none", "pool", "flatten"]),
        "seed": st.integers(0, 2**16),
    }
)


class _Builder:
    """Builds a graph spec into a model, counting its activations and
    tracking the spatial size (which the model may not know)."""

    def __init__(self, rank, size):
        self.rank = rank
        self.size = size
        self.activations = 0
        self.linear = 0

    def apply(self, spec, x):
        """`x` through the block, or `x` itself if the block does not fit."""
        kind = spec["kind"]
        if kind in ("conv", "depthwise"):
            size = _conv_output_size(self.size, spec)
            if size is None:
                return x
            self.size = size
            return self._conv(spec, x)
        if kind == "dense":
            units = spec["units"] or x.shape[-1]
            return make(keras.layers.Dense, units, use_bias=spec["bias"])(x)
        if kind == "bn":
            return builders.bn(x, spec["seed"], dead=spec["dead"])
        if kind == "act":
            return self._activation(spec, x)
        if kind == "dropout":
            return keras.layers.Dropout(0.5)(x)
        if kind == "concat":
            return keras.layers.Concatenate()([x, self._branch(spec, x)])
        return self._residual(spec, x)

    def _conv(self, spec, x):
        common = {
            "strides": spec["stride"],
            "padding": spec["padding"],
            "use_bias": spec["bias"],
        }
        if spec["kind"] == "depthwise":
            cls = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
            return make(
                cls[self.rank - 1],
                spec["kernel"],
                depth_multiplier=spec["multiplier"],
                **common,
            )(x)
        cls = (keras.layers.Conv1D, keras.layers.Conv2D)[self.rank - 1]
        return make(cls, spec["filters"] or x.shape[-1], spec["kernel"], **common)(x)

    def _activation(self, spec, x):
        mode = spec.get("shared", "all")
        if mode == "none" and None in x.shape[1:]:
            mode = "channel"  # one alpha per position needs a known size
        shared = {
            "all": "all",
            "channel": list(range(1, self.rank + 1)),
            "none": None,
        }[mode]
        layer = kc.CollapsibleActivation(
            spec["activation"], shared_axes=shared, alpha_regularizer=None
        )
        y = layer(x)
        mode = spec["mode"]
        if mode == "locked":
            layer.lock_linear()
        elif mode == "one":
            layer.set_alpha(1.0)
        elif mode == "between":
            shape = layer.alpha.shape
            rng = np.random.default_rng(int(spec["alpha"] * 1e6))
            alpha = spec["alpha"] if not shape else rng.uniform(0.05, 0.95, shape)
            layer.set_alpha(alpha)
        self.activations += 1
        self.linear += mode in LINEAR_MODES
        return y

    def _branch(self, spec, x):
        for inner in spec["branch"]:
            x = self.apply(inner, x)
        return x

    def _residual(self, spec, x):
        h = self._branch(spec, x)
        if spec["shortcut"] == "pointwise":
            cls = (keras.layers.Conv1D, keras.layers.Conv2D)[self.rank - 1]
            x = make(cls, x.shape[-1], 1)(x)
        return keras.layers.Add()([x, h])


def _conv_output_size(size, spec):
    """The spatial size after a conv block, or None if it does not fit."""
    kernel, stride = spec["kernel"], spec["stride"]
    if (spec["padding"] == "valid" and size < kernel) or stride > size:
        return None
    if spec["padding"] == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1


def build(graph):
    """The model of a graph spec, the input shape to give the surgery, the
    number of activations and of linear ones."""
    keras.utils.set_random_seed(graph["seed"])
    shape = (16, 4) if graph["rank"] == 1 else (8, 8, 4)
    declared = shape
    if graph["unknown_size"]:
        declared = (None,) * graph["rank"] + (4,)
    builder = _Builder(graph["rank"], shape[0])
    if "tokens" in graph:
        inputs = keras.Input((shape[0],), dtype="int32", name="token_ids")
        x = keras.layers.Embedding(graph["tokens"], 4)(inputs)
    else:
        inputs = keras.Input(declared)
        x = inputs
    for spec in graph["blocks"]:
        x = builder.apply(spec, x)
    if graph["head"] == "pool":
        pool = (
            keras.layers.GlobalAveragePooling1D,
            keras.layers.GlobalAveragePooling2D,
        )
        x = make(keras.layers.Dense, 3)(pool[graph["rank"] - 1]()(x))
    elif graph["head"] == "flatten" and not graph["unknown_size"]:
        x = make(keras.layers.Dense, 3)(keras.layers.Flatten()(x))
    if x is inputs:  # nothing fitted: keep one layer so the model is not empty
        x = make(keras.layers.Dense, 3)(x)
    tail = {
        "dropout": lambda: keras.layers.Dropout(0.3, name="out"),
        "identity": lambda: keras.layers.Identity(name="out"),
        "linear": lambda: keras.layers.Activation("linear", name="out"),
    }.get(graph.get("tail", "none"))
    if tail is not None:
        x = tail()(x)
    model = keras.Model(inputs, x)
    return model, shape, builder.activations, builder.linear


class TestRandomGraphs(builders.SurgeryTestCase):
    @settings(max_examples=builders.EXAMPLES, deadline=None, database=None)
    @given(graph=graphs)
    def test_exact_surgery_keeps_the_function(self, graph, tmp_path_factory):
        model, shape, activations, linear = build(graph)
        _, report = self.check_surgery(
            model, tmp_path_factory.mktemp("graph"), input_shape=shape
        )
        # check_surgery checked after == before; both count what the graph has.
        assert report.before.activations == activations - linear

    @settings(max_examples=builders.EXAMPLES, deadline=None, database=None)
    @given(graph=stacks)
    def test_stacks_with_dead_channels(self, graph, tmp_path_factory):
        model, shape, activations, linear = build(graph)
        _, report = self.check_surgery(
            model, tmp_path_factory.mktemp("stack"), input_shape=shape
        )
        assert report.before.activations == activations - linear

    @settings(max_examples=builders.EXAMPLES // 2, deadline=None, database=None)
    @given(graph=token_graphs)
    def test_token_ids_through_an_embedding(self, graph, tmp_path_factory):
        # The surgery's own random inputs must stay within the vocabulary
        # (ids out of range crash TF and torch; JAX clamps them).
        model, shape, activations, linear = build(graph)
        _, report = self.check_surgery(model, tmp_path_factory.mktemp("tokens"))
        assert report.before.activations == activations - linear

    @settings(max_examples=builders.EXAMPLES // 2, deadline=None, database=None)
    @given(graph=graphs, policy=st.sampled_from(["mixed_float16", "mixed_bfloat16"]))
    def test_mixed_precision(self, graph, policy):
        # Judged against the float32 copy of the model, at the precision the
        # policy can represent: the surgery must not refuse its own result.
        keras.config.set_dtype_policy(policy)
        try:
            model, shape, _, _ = build(graph)
            small, report = kc.surgery(model, return_report=True, input_shape=shape)
        finally:
            keras.config.set_dtype_policy("float32")
        check = report.verification
        assert check.passed and check.policy == policy.split("_")[1]
        assert [t.dtype for t in small.outputs] == [t.dtype for t in model.outputs]
        assert small.output_names == model.output_names

    @pytest.mark.parametrize("rank", [1, 2])
    def test_locked_chain_collapses_to_one_layer(self, rank, tmp_path):
        # conv (valid) -> BN -> locked -> conv 1x1 -> BN -> alpha=1 -> dense,
        # 4 -> 6 -> 6 -> 5 channels: every merge is exact, and merging all
        # three is cheapest (k*4*5 MACs per position, not k*4*6 + 6*5), so
        # one linear layer must remain.
        graph = {
            "rank": rank,
            "unknown_size": False,
            "seed": 3,
            "head": "none",
            "blocks": [
                {
                    "kind": "conv",
                    "filters": 6,
                    "kernel": 3,
                    "padding": "valid",
                    "stride": 2,
                    "bias": True,
                },
                {"kind": "bn", "seed": 1, "dead": 0.0},
                {"kind": "act", "activation": "gelu", "mode": "locked", "alpha": 0.5},
                {
                    "kind": "conv",
                    "filters": 6,
                    "kernel": 1,
                    "padding": "same",
                    "stride": 1,
                    "bias": False,
                },
                {"kind": "bn", "seed": 2, "dead": 0.0},
                {"kind": "act", "activation": "relu", "mode": "one", "alpha": 0.5},
                {"kind": "dense", "units": 5, "bias": True},
            ],
        }
        model, _, activations, linear = build(graph)
        assert activations == linear == 2
        small, report = self.check_surgery(model, tmp_path)
        assert report.after.depth == 1 and report.before.depth == 3
        assert report.after.activations == 0
        weighted = [layer for layer in small.layers if layer.weights]
        assert len(weighted) == 1


def _after(model, shape, lock=()):
    """The surgery result's stats, with activations `lock` locked first on
    a copy of `model` (verified elsewhere: here only what it saves)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    kc.lock_linear(copy, [a for a in kc.collapsible_layers(copy) if a.name in lock])
    _, report = kc.surgery(copy, return_report=True, input_shape=shape, verify=False)
    return report.after


class TestMergeUnitsOnRandomGraphs:
    """`merge_units` finds what the real surgery does: every activation
    whose linearization alone lowers the result's depth or MACs is a unit
    with the surgery's own savings, and every unit saves what it says.
    (Layer counts differ by emission: an activation between linear and its
    kind is emitted as more than one plain layer.)"""

    @settings(max_examples=builders.EXAMPLES // 2, deadline=None, database=None)
    @given(graph=st.one_of(graphs, stacks).filter(lambda g: not g["unknown_size"]))
    def test_every_unit_saves_what_the_real_surgery_saves(self, graph):
        model, shape, _, _ = build(graph)
        found = kc.merge_units(model)
        base = _after(model, shape)
        alone = {u.activations[0]: u for u in found.units if len(u.activations) == 1}
        for name in found.candidates[:3]:
            after = _after(model, shape, [name])
            saved = (base.depth - after.depth, base.macs - after.macs)
            unit = alone.get(name)
            if unit is None:
                assert max(saved) <= 0, (name, saved, found.table())
            else:
                assert (unit.depth, unit.macs) == saved, (name, unit)
        for unit in found.units[:2]:
            after = _after(model, shape, unit.activations)
            assert (unit.depth, unit.macs) == (
                base.depth - after.depth,
                base.macs - after.macs,
            ), unit
