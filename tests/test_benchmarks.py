"""The linearization benchmark, reduced to sklearn digits: it runs, and its
numbers agree with each other (surgery keeps accuracy; linearized counts add
up; the control linearizes nothing; every run trains the same epochs)."""

import json

import keras
import pytest

from benchmarks import linearization_fashion_mnist as bench
from tests.testing import require

# Each run builds ~30 models and traces their train/eval/predict steps: about
# 70 s on torch (verified 2026-12-01 with a benchmark sharing the 2 CPUs),
# several minutes on TensorFlow and JAX, where it runs with --run-large. The
# callbacks themselves are tested on every backend (tests/callbacks).


def large_off_torch(test):
    return pytest.mark.large(test) if keras.backend.backend() != "torch" else test


RUNS = [
    "base (BN folded)",
    "fine-tune control",
    "TLC, data-free",
    "TLC, data",
    "TLC, validation",
    "EASIER",
    "NEPENTHE",
    "random layer",
]


@large_off_torch
def test_linearization_benchmark_on_digits(tmp_path):
    require("sklearn", "the digits data")
    require("matplotlib", "the benchmark figure")
    out = tmp_path / "digits"
    base_epochs, finetune_epochs = 2, 3
    rows = bench.main(
        [
            "--dataset",
            "digits",
            "--models",
            "mobilenetv2",
            "--width",
            "4",
            "--train",
            "400",
            "--val",
            "200",
            "--test",
            "300",
            "--samples",
            "200",
            "--base-epochs",
            str(base_epochs),
            "--finetune-epochs",
            str(finetune_epochs),
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    assert [r["run"] for r in rows] == RUNS
    base, control, *methods = rows
    total = base["activations"]
    assert total == 16  # stem, 7 blocks x 2, head
    for r in rows:
        # The surgery result classifies exactly as the model it came from.
        assert r["collapsed_accuracy"] == pytest.approx(r["accuracy"], abs=1e-6)
        assert 0.0 <= r["recalibrated_accuracy"] <= 1.0
        assert r["activations"] == total
        assert 0 <= r["linearized"] <= total
        assert r["linearized"] == len(r["layers"]) == len(set(r["layers"]))
        assert r["rollbacks"] >= 0
        # The surgery merges only what costs fewer MACs (a merged 3x3 may
        # hold more params than the layers it replaces).
        assert r["macs"] <= base["macs"]
        assert 0 < r["depth"] <= base["depth"]
        assert r["speedup_b1"] > 0 and r["speedup_b64"] > 0
    assert base["epochs"] == base_epochs
    assert base["speedup_b1"] == base["speedup_b64"] == 1.0
    # The control is fine-tuned like the others, with nothing linearized.
    assert control["linearized"] == 0 and control["rollbacks"] == 0
    assert control["events"] == []
    for r in [control, *methods]:
        assert r["epochs"] == base_epochs + finetune_epochs
    # Warm-up 1, interval 2 (the defaults): in 3 epochs one decision has
    # room to be judged, so each method makes at most one change (NEPENTHE's
    # is a pruning round, which may also linearize).
    changed = ("linearized", "pruned")
    for r in methods:
        changes = [e for e in r["events"] if e["action"] in changed]
        assert len(changes) <= 1 and r["rollbacks"] <= len(changes)
        assert r["linearized"] == sum(
            len(e["layers"]) for e in r["events"] if e["action"] in changed
        ) - sum(len(e["layers"]) for e in r["events"] if e["action"] == "rolled back")
    # Only NEPENTHE prunes: half its candidates' weights, unless rolled back.
    nepenthe = rows[RUNS.index("NEPENTHE")]
    for r in rows:
        if r is not nepenthe:
            assert r["sparsity"] == 0.0
    if nepenthe["rollbacks"] == 0:
        assert 0.3 < nepenthe["sparsity"] < 0.7
    assert sum(r["linearized"] + r["rollbacks"] for r in methods) > 0
    # Every guard is an accuracy: the training one in the logs (data-free
    # TLC, TLC with data, random) or the validation sample's (the others).
    assert all(r["monitored"] == "accuracy" for r in methods)
    text = out.with_suffix(".txt").read_text()
    assert "command: python3 scripts/dev.py run" in text
    assert "linearization_fashion_mnist.py --dataset digits" in text
    for run in RUNS:
        assert run in text
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [r["run"] for r in saved] == RUNS
    assert out.with_suffix(".png").stat().st_size > 0


def test_unknown_run_is_refused():
    with pytest.raises(SystemExit):
        bench.main(["--dataset", "digits", "--runs", "control,nope"])
