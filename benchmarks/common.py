"""Helpers shared by the benchmark scripts. Keras-free at import time: the
parent of a `--backends` run must not import Keras, because `KERAS_BACKEND`
is read once, at Keras' first import."""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

BACKENDS = ("jax", "tensorflow", "torch")
ROOT = Path(__file__).resolve().parent.parent


def table(header, rows, align=None):
    """Lays out rows of strings under a header; `align` is one '<' or '>' per
    column (default: first column left, the others right)."""
    align = align or "<" + ">" * (len(header) - 1)
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [
        max(len(row[i]) for row in [list(header), *rows]) for i in range(len(header))
    ]

    def line(cells):
        return "  ".join(
            f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths, strict=True)
        ).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def limit_threads(count):
    """Asks every backend (and NumPy's BLAS) for `count` compute threads.

    Must run before Keras is imported. On a shared machine this matters: two
    OpenMP threads on two busy cores wait for each other at every op (torch
    ran ResNet-20 at batch 1 in ~350 ms with 2 threads, ~20 ms with 1).
    """
    if count is None:
        return
    if "keras" in sys.modules:
        raise RuntimeError("limit_threads() must run before Keras is imported.")
    n = str(count)
    for name in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "TF_NUM_INTRAOP_THREADS",
        "TF_NUM_INTEROP_THREADS",
    ):
        os.environ[name] = n
    xla = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"
    flags = os.environ.get("XLA_FLAGS", "")
    if xla not in flags:  # a `--backends` child inherits its parent's
        os.environ["XLA_FLAGS"] = f"{flags} {xla}".strip()


def threads_line():
    """Compute threads requested and, for torch, in use (imports Keras)."""
    import keras

    requested = os.environ.get("OMP_NUM_THREADS", "backend default")
    line = f"threads: {requested}"
    if keras.backend.backend() == "torch":
        import torch

        line += f" (torch uses {torch.get_num_threads()})"
    return line


def wrap(text, width=100):
    return textwrap.fill(text, width)


def machine_line():
    """Date, CPU count and load: what a reader needs to weigh the numbers."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at start "
        "(shared machine: other jobs ran at the same time)"
    )


def versions_line():
    """Versions of Keras and the active backend (imports Keras)."""
    import keras

    backend = keras.backend.backend()
    version = getattr(__import__(backend), "__version__", "?")
    python = platform.python_version()
    return (
        f"keras {keras.__version__}, {backend} {version}, Python {python}, "
        + threads_line()
    )


def command_line():
    """The command that is running, as one could type it again."""
    backend = os.environ.get("KERAS_BACKEND")
    prefix = f"KERAS_BACKEND={backend} " if backend else ""
    script = os.path.relpath(sys.argv[0], ROOT)
    args = drop_option(sys.argv[1:], "--json")  # a child's temporary file
    return prefix + shlex.join([".venv/bin/python", script, *args])


def run_all_backends(script, backends, title, combine, out=None):
    """Re-runs the calling script once per backend and prints one table.

    The script's own arguments are passed on, except `--backends` and `--out`.

    Args:
        script: str, path of the script.
        backends: list of backend names.
        title: str, the line above the combined table.
        combine: callable `{backend: rows} -> str`, the combined table.
        out: str or None, file to save the combined table to, followed by
            each backend's own report.

    Returns:
        int, 0 if every backend ran, else 1.
    """
    forwarded = drop_option(drop_option(sys.argv[1:], "--backends"), "--out")
    began, machine = time.perf_counter(), machine_line()  # the load at start
    collected = run_per_backend(script, backends, forwarded)
    summary = "\n".join(
        [
            f"# {command_line()}",
            f"# {machine}",
            f"# {time.perf_counter() - began:.0f} s in all",
            "",
            title,
            combine({b: payload["rows"] for b, payload in collected.items()}),
        ]
    )
    print("\n" + summary)
    reports = [f"\n######## {b}\n{p['text']}" for b, p in collected.items()]
    save(out, "\n".join([summary, *reports]))
    return 0 if len(collected) == len(backends) else 1


def drop_option(argv, name):
    """Removes `name value` and `name=value` from an argument list."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def run_per_backend(script, backends, args):
    """Runs `script args` once per backend, each in its own process with
    `KERAS_BACKEND` set, streaming its output.

    Each child is given `--json PATH` and must write there what
    `write_json` writes.

    Returns:
        dict `{backend: {"rows": rows, "text": report}}`, a backend missing if
        its process failed.
    """
    collected = {}
    for backend in backends:
        print(f"\n######## KERAS_BACKEND={backend} ########", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rows.json"
            env = dict(os.environ, KERAS_BACKEND=backend)
            proc = subprocess.run(
                [sys.executable, script, *args, "--json", str(path)], env=env
            )
            if proc.returncode != 0 or not path.exists():
                print(f"!! {backend}: exit code {proc.returncode}", flush=True)
                continue
            collected[backend] = json.loads(path.read_text())
    return collected


def write_json(path, rows, text):
    """For a `--backends` parent: the rows of its table and the full report."""
    if path:
        Path(path).write_text(json.dumps({"rows": rows, "text": text}))


def save(path, text):
    """Writes `text` to `path` (for benchmarks/results/), creating folders."""
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.rstrip() + "\n")
        print(f"\nSaved to {path}")


def parse_backends(value):
    backends = [b for b in value.split(",") if b]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        raise ValueError(
            f"--backends takes a comma-separated subset of {BACKENDS}. "
            f"Received: {value!r}"
        )
    return backends


def add_run_options(parser, out_help="also write the tables to this file"):
    """The options every per-backend benchmark takes: --backends, --out,
    --threads, and the hidden --json its per-backend children write to."""
    parser.add_argument(
        "--backends",
        type=parse_backends,
        help=f"comma-separated subset of {BACKENDS}: one subprocess per "
        "backend and a combined table. Default: the current KERAS_BACKEND only",
    )
    parser.add_argument("--out", help=out_help)
    parser.add_argument(
        "--threads",
        type=int,
        help="compute threads per backend (see limit_threads); 1 is far "
        "steadier on a busy machine. Default: each backend's own choice",
    )
    parser.add_argument("--json", help=argparse.SUPPRESS)


def header_lines():
    """The command, machine and versions lines every result file opens with
    (printed as they are made, so a long run shows what it is at once)."""
    lines = [f"# {command_line()}", f"# {machine_line()}", f"# {versions_line()}"]
    print("\n".join(lines), flush=True)
    return lines


def dispatch(args, script, title, combine, run_here):
    """A benchmark's main after its arguments are parsed: one subprocess per
    backend and a combined table with `--backends`, else `run_here(args)`."""
    limit_threads(args.threads)  # before Keras is imported; children inherit it
    if args.backends:
        return run_all_backends(script, args.backends, title, combine, args.out)
    run_here(args)
    return 0
