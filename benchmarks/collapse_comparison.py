"""Every method, with objective "activations" and "depth", on one epoch budget.

The comparison table of issue 12. For a ResNet-20-style, a MobileNetV2-style
and a VGG-style net with BatchNormalization on Fashion-MNIST: train a plain
base, then fine-tune copies of it for the same number of epochs:

- the control: the plain base, fine-tuned (what the epochs alone give);
- LayerCollapse: `make_collapsible(base, alpha_regularizer=
  LinearityRegularizer(f))`, then `lock_near_linear` (objective
  "activations": every near-linear slope; "depth": whole merge units only);
- TLC data-free (`TLCCallback()`), TLC with data (`TLCCallback(data=x)`),
  EASIER, NEPENTHE and a random ranking, each with `objective=` "activations"
  and "depth";

then `surgery`. The other runs' slopes are frozen (`make_collapsible`
without a regularizer): a callback locks what it linearizes, the rest stays
the plain activation. `--per-decision 0.5` gives the callbacks the adaptive
pace (half the candidates left, halved after each rollback).
Reported per run: activations linearized / total, rollbacks, test accuracy
(of the fine-tuned model and of its surgery result, which agree), real depth,
params and MACs after surgery, epochs in all (base + fine-tuning), and the
latency of the surgery result vs the BN-folded base at batch 1 and 64 on every
backend of `--latency-backends` (the models are saved, then timed side by
side, interleaved, in one process per backend: they load with plain Keras).

    python3 scripts/dev.py run --backend tensorflow \\
        benchmarks/collapse_comparison.py --out benchmarks/results/collapse_comparison

`--dataset digits --train 600 ...` is the reduced version the tests run.
`--keep DIR` keeps the saved models and the rows in DIR; `--retime DIR`
times those models again (on a quiet machine) and prints the table anew,
with no training.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.linearization_fashion_mnist import accuracy  # noqa: E402
from benchmarks.linearization_fashion_mnist import compile_model  # noqa: E402
from benchmarks.linearization_fashion_mnist import copy_model  # noqa: E402
from benchmarks.linearization_fashion_mnist import load_data  # noqa: E402
from benchmarks.linearization_fashion_mnist import mobilenet_v2_style  # noqa: E402
from benchmarks.linearization_fashion_mnist import resnet20_style  # noqa: E402

BASE = "base (BN folded)"
CONTROL = "fine-tune control"
# The control with its BatchNorm statistics re-estimated on the sample the
# one-call methods re-estimate theirs on: what they would score without
# linearizing anything.
CONTROL_BN = "control + BN re-estimation"
METHODS = {
    "layercollapse": "LayerCollapse",
    "tlc": "TLC, data-free",
    "tlc-data": "TLC, data",
    "easier": "EASIER",
    "nepenthe": "NEPENTHE",
    "random": "random",
    "joint": "joint",
    "joint-teacher": "joint + teacher",
    "joint-prior": "joint + EASIER prior",
    "collapse-depth": "collapse",
    "collapse-latency": "collapse",
}
OBJECTIVES = ("activations", "depth")
# The one-call methods' objective, per --methods key.
COLLAPSE_OBJECTIVE = {
    "joint": "activations",
    "joint-teacher": "activations",
    "joint-prior": "activations",
    "collapse-depth": "depth",
    "collapse-latency": "latency",
}


def vgg_bn_style(input_shape, width=16):
    """A VGG-style net with BN: two 3x3 conv-BN-ReLU per stage, max pooling,
    then a Dense-BN-ReLU hidden layer and the classifier."""
    import keras

    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = inputs
    for filters in (width, 2 * width, 4 * width):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(8 * width, use_bias=False)(x)
    x = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
    return keras.Model(inputs, layers.Dense(10)(x), name="vgg_bn_style")


MODELS = {
    "resnet20": resnet20_style,
    "mobilenetv2": mobilenet_v2_style,
    "vgg": vgg_bn_style,
}


def pace(text):
    """`--per-decision`: an int count, or a float fraction."""
    return float(text) if "." in text else int(text)


def make_run(method, objective, args, base, train, val):
    """`(model, callback, after_fit)` of one fine-tuning run."""
    import keras_collapse as kc

    common = dict(
        seed=args.seed,
        verbose=1,
        warmup_epochs=args.warmup,
        interval=args.interval,
        ramp_epochs=args.ramp_epochs,
        objective=objective,
        per_decision=args.per_decision,
    )
    if method == "LayerCollapse":
        model = kc.make_collapsible(
            base, alpha_regularizer=kc.LinearityRegularizer(args.factor)
        )

        def lock(m):
            return kc.lock_near_linear(m, args.lock_tolerance, objective=objective)

        return model, None, lock
    model = kc.make_collapsible(base)  # no regularizer: slopes frozen
    if method == "TLC, data-free":
        callback = kc.TLCCallback(**common)
    elif method == "TLC, data":
        callback = kc.TLCCallback(data=train[0], samples=args.samples, **common)
    elif method == "EASIER":
        callback = kc.EASIERCallback(
            train[0], validation_data=val, samples=args.samples, **common
        )
    elif method == "NEPENTHE":
        # NEPENTHE acts at once, at the pace of its prune fraction.
        skip = ("ramp_epochs", "per_decision")
        pruning = {k: v for k, v in common.items() if k not in skip}
        callback = kc.NEPENTHECallback(
            train[0], validation_data=val, samples=args.samples, **pruning
        )
    elif method == "random":
        callback = kc.TLCCallback(ranking="random", **common)
    else:
        raise ValueError(f"unknown method {method!r}")
    return model, callback, None


def recalibrated(x, args):
    """An `after_fit` that re-estimates BatchNorm as `kc.collapse` does (on
    its sample of the training inputs) and locks nothing."""
    import numpy as np

    import keras_collapse as kc

    def after(model):
        rows = np.random.default_rng(args.seed).permutation(len(x))[: args.samples]
        kc.recalibrate_batchnorm(model, x[np.sort(rows)], in_place=True)
        return []

    return after


def collapse_run(key, objective, target, args, base, train, val):
    """`(model, result, surgery report, linearized)` of one `kc.collapse`
    call on a copy of the base, compiled for fine-tuning."""
    import keras_collapse as kc

    model = compile_model(copy_model(base), args.lr * args.finetune_lr_factor)
    small, report = kc.collapse(
        model,
        train,
        objective=objective,
        target=target,
        epochs=args.finetune_epochs,
        batch_size=args.batch_size,
        teacher="auto" if key == "joint-teacher" else None,
        prior="easier" if key == "joint-prior" else None,
        search=args.search,
        polarize=args.polarize,
        samples=args.samples,
        latency=False,
        seed=args.seed,
        verbose=0,
    )
    return small, small, report.surgery, list(report.linearized)


def run_model(name, args, data, folder, log):
    import keras

    import keras_collapse as kc

    train, val, test = data
    keras.utils.set_random_seed(args.seed)
    base = compile_model(MODELS[name](train[0].shape[1:], args.width), args.lr)
    start = time.time()
    base.fit(*train, batch_size=args.batch_size, epochs=args.base_epochs, verbose=0)
    log(f"[{name}] base: {args.base_epochs} epochs in {time.time() - start:.0f} s")
    folded, folded_report = kc.surgery(base, return_report=True)
    total = len(kc.collapsible_layers(kc.make_collapsible(base)))
    files = {BASE: str(folder / f"{name}_{args.seed}_base.keras")}
    folded.save(files[BASE])
    rows = [
        {
            "model": name,
            "seed": args.seed,
            "run": BASE,
            "objective": "",
            "linearized": 0,
            "activations": total,
            "rollbacks": 0,
            "accuracy": accuracy(base, test),
            "collapsed_accuracy": accuracy(folded, test),
            "depth": folded_report.after.depth,
            "params": folded_report.after.params,
            "macs": folded_report.after.macs,
            "epochs": args.base_epochs,
            "fit_seconds": 0.0,
        }
    ]
    runs = [(CONTROL, "", None), (CONTROL_BN, "", None)]
    for key in args.methods:
        method = METHODS[key]
        if key in COLLAPSE_OBJECTIVE:
            targets = args.collapse_targets if key.startswith("collapse") else None
            for target in targets or args.joint_targets:
                runs.append((method, COLLAPSE_OBJECTIVE[key], (key, target)))
        else:
            runs += [(method, o, None) for o in OBJECTIVES]
    for method, objective, one_call in runs:
        keras.utils.set_random_seed(args.seed + 1)  # the same shuffles every run
        start = time.time()
        label = f"{method} [{objective}]" if objective else method
        if one_call is not None:
            key, target = one_call
            label = f"{method} {target:.0%} [{objective}]"
            try:
                model, collapsed, report, linearized = collapse_run(
                    key, objective, target, args, base, train, val
                )
            except ValueError as e:  # e.g. no merge unit reaches the target
                log(f"[{name}] {label}: not run ({e})")
                continue
            callback = None
            seconds = time.time() - start
        else:
            if method in (CONTROL, CONTROL_BN):
                model, callback, after = copy_model(base), None, None
                if method == CONTROL_BN:
                    after = recalibrated(train[0], args)
            else:
                model, callback, after = make_run(
                    method, objective, args, base, train, val
                )
            compile_model(model, args.lr * args.finetune_lr_factor)
            model.fit(
                *train,
                batch_size=args.batch_size,
                epochs=args.finetune_epochs,
                callbacks=[callback] if callback is not None else [],
                verbose=0,
            )
            seconds = time.time() - start
            locked = after(model) if after is not None else []
            linearized = (
                [layer.name for layer in locked]
                if after is not None
                else list(callback.linearized)
                if callback is not None
                else []
            )
            collapsed, report = kc.surgery(model, return_report=True)
        files[label] = str(folder / f"{name}_{args.seed}_{len(files)}.keras")
        collapsed.save(files[label])
        rows.append(
            {
                "model": name,
                "seed": args.seed,
                "run": label.rsplit(" [", 1)[0],
                "objective": objective,
                "linearized": len(linearized),
                "activations": total,
                "rollbacks": callback.rollbacks if callback is not None else 0,
                "layers": linearized,
                "accuracy": accuracy(model, test),
                "collapsed_accuracy": accuracy(collapsed, test),
                "depth": report.after.depth,
                "params": report.after.params,
                "macs": report.after.macs,
                "epochs": args.base_epochs + args.finetune_epochs,
                "fit_seconds": seconds,
            }
        )
        shown = {k: v for k, v in rows[-1].items() if k != "layers"}
        log(f"[{name}] {label}: {shown} ({seconds:.0f} s)")
    return rows, files


def time_saved_models(files, repeats):
    """Child process: the latency ratios of saved models vs the first."""
    import keras

    import keras_collapse as kc

    # Uncompiled: every model's predict then jit-compiles as this backend
    # does by default (a compile config saved on TensorFlow pins
    # jit_compile=False, which makes JAX run predict eagerly).
    models = {
        label: keras.models.load_model(path, compile=False)
        for label, path in files.items()
    }
    result = kc.measure_latency(models, batch_sizes=(1, 64), repeats=repeats)
    return {
        label: {str(b): r for b, r in entry["speedup"].items()}
        for label, entry in result["models"].items()
    }


def latency_per_backend(all_files, backends, repeats, log):
    """`{backend: {model: {label: {"1": ratio, "64": ratio}}}}`, one process
    per backend."""
    out = {}
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            spec, result = Path(tmp) / "files.json", Path(tmp) / "result.json"
            spec.write_text(json.dumps(all_files))
            env = dict(os.environ, KERAS_BACKEND=backend)
            start = time.time()
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--time-saved",
                    str(spec),
                    "--repeats",
                    str(repeats),
                    "--json",
                    str(result),
                ],
                env=env,
            )
            if proc.returncode != 0:
                log(f"!! latency on {backend}: exit code {proc.returncode}")
                continue
            out[backend] = json.loads(result.read_text())
            log(f"latency on {backend}: {time.time() - start:.0f} s")
    return out


def _label(r):
    return f"{r['run']} [{r['objective']}]" if r["objective"] else r["run"]


def _groups(rows):
    """Rows of one (model, run, objective) over the seeds, in first-seen order."""
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], _label(r)), []).append(r)
    return groups


def _mean_std(values):
    import numpy as np

    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _latency(latency, backend, r):
    return latency.get(backend, {}).get(f"{r['model']}@{r['seed']}", {}).get(_label(r))


def format_rows(rows, latency):
    """One line per (model, run, objective): means over the seeds, the test
    accuracy as mean ± standard deviation, and its difference from the
    control's mean."""
    from benchmarks.common import table

    backends = list(latency)
    header = [
        "model",
        "run",
        "objective",
        "seeds",
        "linearized",
        "rollbacks",
        "test acc (mean ± sd)",
        "vs control",
        "depth",
        "params",
        "MACs",
        *[f"{b} b1/b64" for b in backends],
        "epochs",
    ]
    groups = _groups(rows)
    body = []
    for (model, _), group in groups.items():
        control = groups.get((model, CONTROL), group)
        acc, sd = _mean_std([r["collapsed_accuracy"] for r in group])
        ref, _ = _mean_std([r["collapsed_accuracy"] for r in control])
        ratios = []
        for b in backends:
            found = [e for r in group if (e := _latency(latency, b, r))]
            if not found:
                ratios.append("n/a")
                continue
            one = _mean_std([e["1"] for e in found])[0]
            many = _mean_std([e["64"] for e in found])[0]
            ratios.append(f"{one:.2f}/{many:.2f}x")
        first = group[0]
        body.append(
            (
                model,
                first["run"],
                first["objective"] or "-",
                len(group),
                f"{_mean_std([r['linearized'] for r in group])[0]:.1f}"
                f"/{first['activations']}",
                f"{_mean_std([r['rollbacks'] for r in group])[0]:.1f}",
                f"{acc:.4f} ± {sd:.4f}",
                f"{acc - ref:+.4f}",
                f"{_mean_std([r['depth'] for r in group])[0]:.1f}",
                f"{_mean_std([r['params'] for r in group])[0]:,.0f}",
                f"{_mean_std([r['macs'] for r in group])[0]:,.0f}",
                *ratios,
                first["epochs"],
            )
        )
    return table(header, body, "<<<" + ">" * (len(header) - 3))


def targets(rows, latency):
    """The targets of issues 12-14, per net, for its best row (means over
    the seeds)."""
    groups = _groups(rows)
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = {label: g for (m, label), g in groups.items() if m == name}
        base = _mean_std([r["depth"] for r in mine[BASE]])[0]
        control = _mean_std([r["collapsed_accuracy"] for r in mine[CONTROL]])[0]
        scored = []
        for label, group in mine.items():
            if label in (BASE, CONTROL, CONTROL_BN):
                continue
            acc = _mean_std([r["collapsed_accuracy"] for r in group])[0]
            share = _mean_std([r["linearized"] / r["activations"] for r in group])[0]
            depth = _mean_std([r["depth"] for r in group])[0]
            faster = [
                b
                for b in latency
                if all(
                    (e := _latency(latency, b, r)) and min(e.values()) > 1
                    for r in group
                )
            ]
            scored.append((label, acc - control, share, 1 - depth / base, faster))
        near = [t for t in scored if t[1] >= -0.005]
        if not scored:
            continue
        best = max(near or scored, key=lambda t: (t[2], t[3]))
        deepest = max(
            [t for t in scored if t[1] >= -0.01] or scored, key=lambda t: t[3]
        )
        lines.append(
            f"{name}: most linearized within 0.5 pt of the control's mean: "
            f"{best[0] if near else 'none'} — {best[2]:.0%} linearized (target "
            f">= 50%), accuracy {best[1]:+.4f} vs control; most depth within 1 pt: "
            f"{deepest[0]} — depth {deepest[3]:.0%} lower (MobileNetV2 target >= "
            f"30%), faster than the folded base at b1 and b64 (every seed) on: "
            f"{deepest[4] or 'none'}"
        )
    return "\n".join(lines)


def plot(rows, path):
    """Accuracy against the linearized fraction, one line per method (means
    over the seeds, bars: standard deviation), one panel per net, saved to
    `path`; returns the (closed) figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    groups = _groups(rows)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 5))
    axes = list(axes) if len(models) > 1 else [axes]
    # One colour per method (its objectives share it, "depth" drawn with
    # triangles) on every panel: the legend is read for all of them.
    colours, palette = {}, plt.get_cmap("tab20").colors
    for ax, name in zip(axes, models):
        lines = {}
        for (model, _), group in groups.items():
            if model != name:
                continue
            first = group[0]
            method = (
                first["run"].split(" ")[0]
                if first["run"].startswith(("joint", "collapse"))
                else first["run"]
            )
            if first["run"].startswith("joint + teacher"):
                method = "joint + teacher"
            method = (
                f"{method} [{first['objective']}]" if first["objective"] else method
            )
            share = _mean_std([r["linearized"] / r["activations"] for r in group])[0]
            acc, sd = _mean_std([r["collapsed_accuracy"] for r in group])
            lines.setdefault(method, []).append((share, acc, sd))
        for method, points in lines.items():
            points.sort()
            xs, ys, sds = zip(*points)
            family = method.split(" [")[0]
            colour = colours.setdefault(family, palette[len(colours) % len(palette)])
            style = "s" if method in (BASE, CONTROL, CONTROL_BN) else "o-"
            if method.endswith("[depth]"):
                style = "^--"
            ax.errorbar(
                xs, ys, yerr=sds, fmt=style, capsize=3, label=method, color=colour
            )
        ax.set_xlabel("activations linearized (fraction)")
        ax.set_ylabel("test accuracy after surgery")
        ax.set_title(name)
    # Every panel's methods, in one legend right of the panels (outside all
    # of them: `bbox_inches="tight"` widens the file to hold it).
    named = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            named.setdefault(label, handle)
    fig.tight_layout()
    fig.legend(
        list(named.values()),
        list(named),
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=7,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist"
    )
    parser.add_argument("--models", default="resnet20,mobilenetv2,vgg")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        help=f"a comma-separated subset of {list(METHODS)}",
    )
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--base-epochs", type=int, default=4)
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=4,
        help="epochs of every fine-tuning run (total <= 2x the base's)",
    )
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--interval", type=int, default=1)
    parser.add_argument("--ramp-epochs", type=int, default=0)
    parser.add_argument(
        "--per-decision",
        type=pace,
        default=1,
        help="activations (or merge units) a callback changes per decision: "
        "an int, or a fraction in (0, 1) of those left, halved at each rollback",
    )
    parser.add_argument(
        "--joint-targets",
        default="0.3,0.5,0.7",
        type=lambda t: [float(v) for v in t.split(",")],
        help="targets of the joint rows (kc.collapse, objective activations)",
    )
    parser.add_argument(
        "--collapse-targets",
        default="0.3",
        type=lambda t: [float(v) for v in t.split(",")],
        help="targets of the collapse-depth / collapse-latency rows",
    )
    parser.add_argument(
        "--search",
        type=lambda v: v if v == "auto" else float(v),
        default="auto",
        help="collapse rows: the gates' search share of the fine-tune",
    )
    parser.add_argument(
        "--polarize",
        type=lambda v: v if v == "auto" else float(v),
        default="auto",
        help="collapse rows: the polarization share (the rest is recovery)",
    )
    parser.add_argument("--factor", type=float, default=5.0)
    parser.add_argument("--lock-tolerance", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--finetune-lr-factor", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds per run (base init and data order; the data subset stays)",
    )
    parser.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="the seed of the data subset (default: --seed); one seed per process "
        "with --seed N --seeds 1 --data-seed 0 gives the rows of one --seeds run",
    )
    parser.add_argument("--latency-backends", default="jax,tensorflow,torch")
    parser.add_argument("--out", default=None, help="write <out>.txt/.json/.png")
    parser.add_argument(
        "--keep", help="keep the saved models and the rows in this folder"
    )
    parser.add_argument(
        "--retime",
        help="a --keep folder: time its models again and print the table, no training",
    )
    parser.add_argument(
        "--replot",
        help="a JSON this script wrote (--out): draw its figure again, next to it",
    )
    parser.add_argument("--time-saved", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.time_saved:
        files = json.loads(Path(args.time_saved).read_text())
        result = {name: time_saved_models(f, args.repeats) for name, f in files.items()}
        Path(args.json).write_text(json.dumps(result))
        return result
    if args.replot:
        source = Path(args.replot)
        plot(json.loads(source.read_text())["rows"], source.with_suffix(".png"))
        return None
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; expected some of {list(METHODS)}")

    import keras

    from benchmarks.common import command_line
    from benchmarks.common import machine_line

    def log(message):
        print(message, flush=True)

    started, machine = time.time(), machine_line()
    backends = [b for b in args.latency_backends.split(",") if b]
    if args.retime:
        kept = json.loads((Path(args.retime) / "run.json").read_text())
        rows, files, trained = kept["rows"], kept["files"], kept["command"]
        for key, value in kept["settings"].items():
            if key not in ("repeats", "latency_backends", "retime", "out"):
                setattr(args, key, value)
        latency = latency_per_backend(files, backends, args.repeats, log)
    else:
        data_seed = args.seed if args.data_seed is None else args.data_seed
        data = load_data(args.dataset, args.train, args.val, args.test, data_seed)
        log(
            f"{args.dataset}: {len(data[0][0])} train / {len(data[1][0])} val / "
            f"{len(data[2][0])} test; training on {keras.backend.backend()}"
        )
        rows, files, trained = [], {}, None
        first_seed = args.seed
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(args.keep or tmp)
            folder.mkdir(parents=True, exist_ok=True)
            for name in args.models.split(","):
                for seed in range(first_seed, first_seed + args.seeds):
                    args.seed = seed
                    model_rows, files[f"{name}@{seed}"] = run_model(
                        name, args, data, folder, log
                    )
                    rows += model_rows
            args.seed = first_seed
            if args.keep:
                (folder / "run.json").write_text(
                    json.dumps(
                        {
                            "rows": rows,
                            "files": files,
                            "command": command_line(),
                            "settings": vars(args),
                        },
                        default=str,
                    )
                )
            latency = latency_per_backend(files, backends, args.repeats, log)
    text = "\n".join(
        [
            f"# {command_line()}",
            *([f"# re-timed models trained by: {trained}"] if trained else []),
            f"# {machine}; {time.time() - started:.0f} s in all; trained on "
            f"{keras.backend.backend()} {keras.__version__}",
            f"settings: {vars(args)}",
            f"every fine-tuning run trains {args.finetune_epochs} epochs after the "
            f"base's {args.base_epochs}; callbacks: warmup {args.warmup}, interval "
            f"{args.interval}, ramp {args.ramp_epochs}, per decision "
            f"{args.per_decision}; LayerCollapse: "
            f"LinearityRegularizer({args.factor}), lock_near_linear("
            f"{args.lock_tolerance})",
            "latency: surgery result vs the BN-folded base, median of "
            f"{args.repeats} interleaved runs, one process per backend (>1 = faster)",
            "",
            format_rows(rows, latency),
            "",
            targets(rows, latency),
        ]
    )
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".txt").write_text(text + "\n")
        out.with_suffix(".json").write_text(
            json.dumps({"rows": rows, "latency": latency}, indent=1, default=str)
        )
        plot(rows, out.with_suffix(".png"))
    return rows, latency


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    main()
