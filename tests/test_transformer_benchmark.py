"""The transformer benchmark, reduced to sklearn digits: it runs, and its
numbers agree with each other (the surgery result classifies as its model;
one merge per locked GELU; surgery never adds depth, params or MACs and
removes some when an MLP collapsed; both runs train the same epochs)."""

import json
import math

import keras
import pytest

from benchmarks import transformer_collapse as bench
from tests.testing import require

# 23-27 s on torch (one thread), 55-64 s on TensorFlow and 76-82 s on JAX,
# which compile the train / eval / predict steps of four models and of the
# surgery results (measured 2026-12-01 on 2 cores shared with other jobs):
# large there, run with --run-large.


def large_off_torch(test):
    return pytest.mark.large(test) if keras.backend.backend() != "torch" else test


@large_off_torch
def test_transformer_benchmark_on_digits(tmp_path, one_torch_thread):
    require("sklearn", "the digits data")
    require("keras_hub", "the transformer layers")
    out = tmp_path / "digits"
    # --threads 0: Keras is imported already, the fixture limits torch.
    argv = ["--dataset", "digits", "--threads", "0", "--repeats", "2"]
    rows = bench.main([*argv, "--out", str(out)])
    runs = [(r["model"], r["run"]) for r in rows]
    assert runs == [
        ("vit", "control"),
        ("vit", "LayerCollapse"),
        ("rows", "control"),
        ("rows", "LayerCollapse"),
    ]
    defaults = bench.DEFAULTS["digits"]
    blocks = defaults["layers"]
    for r in rows:
        # The surgery result classifies exactly as the model it came from.
        assert r["surgery_accuracy"] == pytest.approx(r["accuracy"], abs=1e-6)
        assert r["accuracy"] > 0.3  # 10 classes: it learned something
        # One merge (fc1 and fc2 into one Dense) per locked GELU, no other.
        assert r["mlps_collapsed"] == len(r["locked"]) <= blocks
        assert all(len(layers) == 2 for layers in r["merged"])
        before, after = r["before"], r["after"]
        for key in ("depth", "params", "macs"):
            assert after[key] <= before[key], (r["model"], r["run"], key)
            if r["mlps_collapsed"]:
                assert after[key] < before[key], (r["model"], r["run"], key)
        # Every block's MLP lies on the longest path: one layer less each.
        assert after["depth"] == before["depth"] - r["mlps_collapsed"]
        assert r["blocks"] == blocks and r["gelus"] == blocks
        # The deepest ceil(fraction * blocks) GELUs, converted in both runs.
        assert len(r["converted"]) == math.ceil(0.5 * blocks)
        assert r["epochs"] == defaults["epochs"] + 1
        for entry in r["latency"].values():
            assert entry["ms"] > 0 and entry["ratio"] > 0 and entry["noise"] > 0
    for model in ("vit", "rows"):
        control, collapse = (r for r in rows if r["model"] == model)
        # Same GELUs, same epochs; only LayerCollapse pulls, locks, merges.
        assert control["converted"] == collapse["converted"]
        assert control["epochs"] == collapse["epochs"]
        assert control["pulled"] == control["locked"] == []
        assert control["mlps_collapsed"] == 0
        assert collapse["pulled"] == collapse["converted"]
        assert set(collapse["locked"]) <= set(collapse["pulled"])
        # The control's reference is itself.
        assert all(e["ratio"] == 1.0 for e in control["latency"].values())
    # The reduced run is tuned so that the pull gets there.
    assert sum(r["mlps_collapsed"] for r in rows) >= 1
    text = out.with_suffix(".txt").read_text()
    assert "transformer_collapse.py --dataset digits --threads 0" in text
    assert "scikit-learn digits: images 0-1399 for training" in text
    saved = json.loads(out.with_suffix(".json").read_text())
    assert "transformer_collapse.py --dataset digits" in saved["command"]
    assert [(r["model"], r["run"]) for r in saved["rows"]] == runs


def test_threads_need_a_fresh_process():
    """Asking for a thread count after Keras' import cannot take effect."""
    with pytest.raises(SystemExit, match="--threads 0"):
        bench.main(["--dataset", "digits"])


def test_unknown_model_is_refused():
    with pytest.raises(SystemExit):
        bench.main(["--dataset", "digits", "--models", "vit,nope", "--threads", "0"])
