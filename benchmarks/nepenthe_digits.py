"""Issue 21's NEPENTHE setting: a Conv/BN/CollapsiblePReLU CNN on scikit-learn
digits, a short base training, then a 12-epoch fine-tune with
`NEPENTHECallback(data, validation_data)` against a no-method control
fine-tuned the same epochs from the same base, over several seeds.

Per seed and run: the held-out accuracy, the activations linearized, the
pruned share, the surgery result's depth against the BN-folded model's and the
largest output difference between the surgery result and the model (the
surgery verifies itself too). Then both runs side by side, mean +- standard
deviation over the seeds, and the ON/OFF entropy of each candidate before and
after the fine-tune (the reason pruning acts at the BatchNormalization).

    python3 scripts/dev.py run --backend torch benchmarks/nepenthe_digits.py \\
        --seeds 3 --out benchmarks/results/nepenthe_digits_torch.txt
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_collapse as kc  # noqa: E402
from benchmarks.common import ROOT  # noqa: E402
from benchmarks.common import machine_line  # noqa: E402
from benchmarks.common import table  # noqa: E402
from benchmarks.common import versions_line  # noqa: E402


def digits(seed):
    """Train 1200 / validation 300 / test 297 rows of sklearn digits, shuffled
    by `seed`."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype("int32")
    return (x[:1200], y[:1200]), (x[1200:1500], y[1200:1500]), (x[1500:], y[1500:])


def cnn(filters=(16, 32, 32), head=32):
    """Conv -> BN -> CollapsiblePReLU per entry of `filters` (max-pooling after
    the second), global average pooling, Dense -> CollapsiblePReLU (no BN),
    Dense(10) logits."""
    inputs = keras.Input((8, 8, 1))
    h = inputs
    for i, f in enumerate(filters):
        h = keras.layers.Conv2D(f, 3, padding="same")(h)
        h = keras.layers.BatchNormalization(momentum=0.9)(h)
        h = kc.CollapsiblePReLU()(h)
        if i == 1:
            h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = kc.CollapsiblePReLU()(keras.layers.Dense(head)(h))
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def compiled(model, lr):
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def entropies(model, x):
    return {s.name: s.entropy for s in kc.activation_statistics(model, x)}


def run(method, base_weights, args, seed, train, val, test):
    keras.utils.set_random_seed(seed)
    model = compiled(cnn(), args.lr)
    model.set_weights(base_weights)
    before = entropies(model, train[0][:1024])
    callback = None
    if method == "nepenthe":
        callback = kc.NEPENTHECallback(train[0], validation_data=val, verbose=0)
    model.fit(
        *train,
        epochs=args.epochs,
        batch_size=64,
        verbose=0,
        callbacks=[callback] if callback else [],
    )
    accuracy = float(model.evaluate(*test, verbose=0)[1])
    small, report = kc.surgery(model, return_report=True)
    expected = model.predict(test[0], verbose=0)
    got = small.predict(test[0], verbose=0)
    # Names differ between runs: entropies by position in the graph.
    after = entropies(model, train[0][:1024])
    return {
        "accuracy": accuracy,
        "small_accuracy": float(np.mean(np.argmax(got, -1) == test[1])),
        "diff": float(np.max(np.abs(got - expected))),
        "depth": (report.before.depth, report.after.depth),
        "linearized": list(callback.linearized) if callback else [],
        "sparsity": callback._overall() if callback else 0.0,
        "rollbacks": callback.rollbacks if callback else 0,
        "entropy": (list(before.values()), list(after.values())),
        "events": callback.events if callback else [],
    }


def mean_sd(values, fmt="{:.4f}"):
    values = np.asarray(values, float)
    return f"{fmt.format(values.mean())} +- {fmt.format(values.std())}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--base-epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default=None, help="also write the lines here")
    args = parser.parse_args(argv)
    script = os.path.relpath(sys.argv[0], ROOT)
    command = shlex.join(
        ["python3", "scripts/dev.py", "run", "--backend", keras.backend.backend()]
        + [script, *sys.argv[1:]]
    )
    lines = [
        f"# {command}",
        f"# {machine_line()}",
        f"# {versions_line()}",
        f"# base: {args.base_epochs} epochs at Adam 3e-3; fine-tune: {args.epochs} "
        f"epochs at Adam {args.lr}, batch 64; test: 297 held-out digits",
    ]
    print(lines[0], flush=True)
    results = {"control": [], "nepenthe": []}
    for seed in range(args.seeds):
        train, val, test = digits(seed)
        keras.utils.set_random_seed(seed)
        base = compiled(cnn(), 3e-3)
        base.fit(*train, epochs=args.base_epochs, batch_size=64, verbose=0)
        base_accuracy = float(base.evaluate(*test, verbose=0)[1])
        lines.append(f"seed {seed}: base accuracy {base_accuracy:.4f}")
        weights = base.get_weights()
        for method in results:
            r = run(method, weights, args, seed, train, val, test)
            results[method].append(r)
            start = len(lines)
            lines.append(
                f"  {method:>8}: accuracy {r['accuracy']:.4f}, linearized "
                f"{len(r['linearized'])} {r['linearized']}, pruned "
                f"{r['sparsity']:.1%}, rollbacks {r['rollbacks']}, depth "
                f"{r['depth'][0]} -> {r['depth'][1]}, surgery result accuracy "
                f"{r['small_accuracy']:.4f}, max |diff| {r['diff']:.2e}"
            )
            for e in r["events"]:
                if e["action"] in ("linearized", "rolled back", "stopped"):
                    lines.append(
                        f"      epoch {e['epoch']}: {e['action']} {e['layers']}"
                        + (f" ({e['reason']})" if e.get("reason") else "")
                    )
            print("\n".join(lines[start:]), flush=True)
        names = ["conv 1", "conv 2", "conv 3", "dense head"]
        r = results["nepenthe"][-1]
        lines.append(
            "  entropy (bits) before -> after the NEPENTHE fine-tune: "
            + ", ".join(
                f"{n} {a:.3f} -> {b:.3f}"
                for n, a, b in zip(names, r["entropy"][0], r["entropy"][1])
            )
        )
    rows = []
    for method, runs in results.items():
        rows.append(
            [
                method,
                mean_sd([r["accuracy"] for r in runs]),
                mean_sd([len(r["linearized"]) for r in runs], "{:.2f}"),
                mean_sd([r["sparsity"] for r in runs], "{:.3f}"),
                mean_sd([r["depth"][1] for r in runs], "{:.2f}"),
                f"{max(r['diff'] for r in runs):.1e}",
            ]
        )
    lines += [
        "",
        f"over {args.seeds} seed(s), mean +- sd "
        f"(BN-folded depth {results['control'][0]['depth'][0]}):",
        table(
            ["run", "accuracy", "linearized", "pruned", "depth after", "max |diff|"],
            rows,
        ),
    ]
    gap = np.mean([r["accuracy"] for r in results["nepenthe"]]) - np.mean(
        [r["accuracy"] for r in results["control"]]
    )
    every = all(r["linearized"] for r in results["nepenthe"])
    lines.append(
        f"NEPENTHE - control: {100 * gap:+.2f} points; at least one activation "
        f"linearized on every seed: {'yes' if every else 'no'}"
    )
    text = "\n".join(lines)
    print("\n".join(lines[-5:]))
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
