"""The TLC benchmark, reduced to sklearn digits: it runs, and its numbers
agree with each other (surgery keeps accuracy; linearized counts add up)."""

import keras
import pytest

from benchmarks import tlc_fashion_mnist as bench

# Each run builds ~20 models and traces their train/eval/predict steps: about
# 30 s on torch, over 2 min on TensorFlow and JAX, where it runs with
# --run-large. The callback itself is tested on every backend (tests/callbacks).
pytestmark = [pytest.mark.large] if keras.backend.backend() != "torch" else []


def test_tlc_benchmark_on_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / "tlc_digits"
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
            "--val-samples",
            "200",
            "--base-epochs",
            "2",
            "--tlc-epochs",
            "3",
            "--interval",
            "1",
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    assert [r["run"] for r in rows] == [
        "base (BN folded)",
        "TLC, data-free",
        "TLC, validation data",
        "random layer",
    ]
    for r in rows:
        # The surgery result classifies exactly as the model it came from.
        assert r["collapsed_accuracy"] == pytest.approx(r["accuracy"], abs=1e-6)
        assert 0 <= r["linearized"] <= r["activations"]
        assert r["params"] <= rows[0]["params"] and r["macs"] <= rows[0]["macs"]
    assert sum(r["linearized"] for r in rows[1:]) > 0
    text = out.with_suffix(".txt").read_text()
    assert "TLC, data-free" in text and "command:" in text
    assert out.with_suffix(".png").stat().st_size > 0
