"""Issue 21's depth setting: a MobileNetV2-style net (inverted residual blocks,
ReLU6) on scikit-learn digits, fine-tuned with `objective="depth"`.

Per method (a no-method control first, on the same base and data order): the
held-out accuracy, the surgery result's real depth against the BN-folded base's,
the activations linearized and the callback's events.

    python3 scripts/dev.py run --backend torch benchmarks/depth_objective_digits.py \
        --seeds 0,1,2
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_collapse as kc  # noqa: E402
from benchmarks.linearization_fashion_mnist import mobilenet_v2_style  # noqa: E402


def digits(seed):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype("int32")
    return (x[:1200], y[:1200]), (x[1200:1500], y[1200:1500]), (x[1500:], y[1500:])


def callback(method, train, val, args):
    # Decisions every `--interval-steps` batches instead of every epoch: a
    # short fine-tune then holds more of them.
    schedule = {"interval_steps": args.interval_steps} if args.interval_steps else {}
    if method == "tlc":
        return kc.TLCCallback(
            validation_data=val, objective="depth", verbose=0, **schedule
        )
    if method == "easier":
        return kc.EASIERCallback(
            train[0][:512],
            validation_data=val,
            objective="depth",
            verbose=0,
            **schedule,
        )
    return None


def run(method, base_weights, args, train, val, test):
    keras.utils.set_random_seed(args.seed)
    model = kc.make_collapsible(mobilenet_v2_style((8, 8, 1), width=args.width))
    model.set_weights(base_weights)
    model.compile(
        keras.optimizers.Adam(args.lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    cb = callback(method, train, val, args)
    model.fit(
        *train,
        epochs=args.epochs,
        batch_size=64,
        verbose=0,
        callbacks=[cb] if cb else [],
    )
    _, report = kc.surgery(model, return_report=True)
    accuracy = model.evaluate(*test, verbose=0)[1]
    return accuracy, report.after.depth, cb


def one_seed(seed, args):
    """`(lines, {method: (accuracy, depth saved)})` of one seed: a base
    trained from it, then the control and each method from that base."""
    args.seed = seed
    train, val, test = digits(seed)
    keras.utils.set_random_seed(seed)
    base = kc.make_collapsible(mobilenet_v2_style((8, 8, 1), width=args.width))
    base.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    base.fit(*train, epochs=args.base_epochs, batch_size=64, verbose=0)
    _, folded = kc.surgery(base, return_report=True)
    base_accuracy = base.evaluate(*test, verbose=0)[1]
    lines = [
        f"seed {seed}: base {args.base_epochs} epochs, held-out accuracy "
        f"{base_accuracy:.4f}, BN-folded depth {folded.after.depth}",
    ]
    weights = base.get_weights()
    results = {}
    for method in ["control", *[m for m in args.methods.split(",") if m]]:
        accuracy, depth, cb = run(method, weights, args, train, val, test)
        saved = 1 - depth / folded.after.depth
        results[method] = (accuracy, saved)
        done = cb.linearized if cb else []
        lines.append(
            f"{method:>8} [depth]: accuracy {accuracy:.4f}, depth "
            f"{folded.after.depth} -> {depth} ({saved:.0%} shallower), "
            f"linearized {len(done)}: {done}"
        )
        for e in cb.events if cb else []:
            measured = (
                f" ({e['value']:.4f} against {e['best']:.4f})"
                if e.get("value") is not None and e.get("best") is not None
                else ""
            )
            lines.append(
                f"    epoch {e['epoch']}: {e['action']} {e['layers']}{measured}"
            )
    return lines, results


def summary(per_seed):
    """Per method over the seeds: the depth saved and the accuracy
    difference to the same seed's control, as mean +- std."""
    lines = [f"over {len(per_seed)} seed(s), against each seed's control:"]
    for method in per_seed[0]:
        if method == "control":
            continue
        saved = np.array([r[method][1] for r in per_seed])
        diff = np.array([r[method][0] - r["control"][0] for r in per_seed])
        lines.append(
            f"{method:>8}: {saved.mean():.1%} +- {saved.std():.1%} shallower "
            f"(per seed {', '.join(f'{v:.0%}' for v in saved)}), accuracy "
            f"{100 * diff.mean():+.2f} +- {100 * diff.std():.2f} points "
            f"(per seed {', '.join(f'{100 * v:+.2f}' for v in diff)})"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="tlc,easier")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--base-epochs", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds, each its own data split, base and runs",
    )
    parser.add_argument(
        "--interval-steps",
        type=int,
        default=None,
        help="the callbacks decide every N training steps (default: every epoch)",
    )
    parser.add_argument("--out", default=None, help="also write the lines here")
    args = parser.parse_args(argv)
    lines = [f"# {' '.join(sys.argv)}  (backend {keras.backend.backend()})"]
    per_seed = []
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        seed_lines, results = one_seed(seed, args)
        print("\n".join(seed_lines), flush=True)
        lines += seed_lines
        per_seed.append(results)
    lines += summary(per_seed)
    print("\n".join(lines[-len(per_seed[0]) :]))
    text = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
