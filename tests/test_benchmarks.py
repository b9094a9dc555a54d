"""The benchmarks, reduced to sklearn digits: they run, and their numbers
agree with each other (surgery keeps accuracy; linearized counts add up; the
control linearizes nothing; every run trains the same epochs)."""

import json

import keras
import pytest

from benchmarks import linearization_fashion_mnist as bench
from tests.testing import require

# Each run builds tens of models and traces their train/eval/predict steps:
# the comparison benchmark's about 25 s on torch, several minutes on
# TensorFlow and JAX, where it runs with --run-large; the older linearization
# benchmark (3 min on torch) runs with --run-large everywhere. The callbacks
# themselves are tested on every backend (tests/callbacks).


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


@pytest.mark.large  # 3 min on torch; the comparison benchmark's test covers its flows
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
    # Only NEPENTHE prunes (whole channels, at most half of each layer's in
    # one round), unless its round was refused or rolled back.
    nepenthe = rows[RUNS.index("NEPENTHE")]
    for r in rows:
        if r is not nepenthe:
            assert r["sparsity"] == 0.0
    pruned = [e for e in nepenthe["events"] if e["action"] == "pruned"]
    if nepenthe["rollbacks"] == 0 and pruned:
        assert 0.0 < nepenthe["sparsity"] <= 0.5 + 1e-9
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


@large_off_torch
def test_comparison_benchmark_on_digits(tmp_path):
    """The comparison table, reduced: two greedy methods with both
    objectives, the joint method at one target, two nets, one seed; latency
    timed in a child process on the current backend."""
    require("sklearn", "the digits data")
    require("matplotlib", "the benchmark figure")
    from benchmarks import collapse_comparison as comparison

    rows, latency = comparison.main(
        [
            "--dataset", "digits", "--models", "mobilenetv2,vgg",
            "--methods", "tlc,layercollapse,joint", "--width", "4",
            "--joint-targets", "0.5", "--seeds", "1",
            "--train", "400", "--val", "150", "--test", "300", "--samples", "150",
            "--base-epochs", "2", "--finetune-epochs", "2", "--repeats", "1",
            "--per-decision", "0.5",
            "--latency-backends", keras.backend.backend(),
            "--out", str(tmp_path / "cmp"),
        ]
    )  # fmt: skip
    runs = {(r["model"], r["run"], r["objective"]) for r in rows}
    for net in ("mobilenetv2", "vgg"):
        assert (net, "base (BN folded)", "") in runs
        assert (net, "fine-tune control", "") in runs
        assert (net, "control + BN re-estimation", "") in runs
        assert (net, "joint 50%", "activations") in runs
        for method in ("TLC, data-free", "LayerCollapse"):
            for objective in ("activations", "depth"):
                assert (net, method, objective) in runs
    for r in rows:
        # The surgery result computes what the fine-tuned model computes.
        assert abs(r["accuracy"] - r["collapsed_accuracy"]) <= 1 / 300
        assert r["epochs"] == (2 if r["run"] == "base (BN folded)" else 4)
        label = f"{r['run']} [{r['objective']}]" if r["objective"] else r["run"]
        timed = latency[keras.backend.backend()][f"{r['model']}@{r['seed']}"]
        assert timed[label]["1"] > 0
        if r["run"] == "fine-tune control":
            assert r["linearized"] == 0
        if r["run"] == "joint 50%":
            assert r["linearized"] == -(-r["activations"] // 2)  # ceil
    text = (tmp_path / "cmp.txt").read_text()
    assert "most linearized within 0.5 pt of the control's mean" in text
    assert "± " in text  # mean and spread
    assert "per decision 0.5;" in text
    assert (tmp_path / "cmp.png").exists()


@pytest.mark.large
@pytest.mark.parametrize(
    "script, args",
    [
        ("training_overhead.py", ["--rounds", "1"]),
        ("cost_models.py", ["--cases", "d", "--repeats", "2"]),
        ("bias_maps.py", ["--repeats", "2"]),
        ("merge_units_time.py", ["--runs", "1"]),
    ],
)
def test_per_backend_benchmarks_run(tmp_path, script, args):
    """The script-style benchmarks run on this backend and write a table."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "out.txt"
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / script), *args, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "ratio" in text and "x" in text


@pytest.mark.large
def test_depth_objective_digits_runs(tmp_path):
    """Issue 21's depth setting: a control and each method, with the real
    depth of the surgery result against the folded base's."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "depth.txt"
    args = ["--epochs", "3", "--base-epochs", "2", "--methods", "tlc"]
    args += ["--seeds", "0,1", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "depth_objective_digits.py"), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    base = int(re.search(r"BN-folded depth (\d+)", text).group(1))
    control = re.search(r"control \[depth\]: .* depth (\d+) -> (\d+)", text)
    assert control and int(control.group(1)) == int(control.group(2)) == base
    assert (
        len(re.findall(r"tlc \[depth\]: accuracy 0\.\d+, depth \d+ -> \d+", text)) == 2
    )
    assert "over 2 seed(s)" in text
    assert re.search(r"tlc: -?\d+\.\d% \+- \d+\.\d% shallower", text)


@pytest.mark.large
def test_nepenthe_digits_runs(tmp_path):
    """Issue 21's NEPENTHE setting: a control and NEPENTHE per seed, the
    surgery's output difference, and the side-by-side summary."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    require("sklearn", "the digits data")
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "nepenthe.txt"
    args = ["--seeds", "1", "--epochs", "3", "--base-epochs", "2", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "nepenthe_digits.py"), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# python3 scripts/dev.py run --backend ")
    control = re.search(r"control: accuracy (0\.\d+), linearized 0 \[\]", text)
    assert control, text
    diffs = [float(d) for d in re.findall(r"max \|diff\| ([0-9.e+-]+)", text)]
    assert len(diffs) == 2 and max(diffs) < 1e-3
    depth = re.search(r"control: .* depth (\d+) -> (\d+)", text)
    assert depth.group(1) == depth.group(2)
    assert re.search(r"^nepenthe\s+0\.\d+ \+- 0\.\d+", text, re.M), text
