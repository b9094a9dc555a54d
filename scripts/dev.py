"""Set up the project's environment and run its jobs. Needs only Python 3.10+.

    python3 scripts/dev.py demo    # train a small model on real data, collapse it
    python3 scripts/dev.py test    # the whole test suite, once per backend
                                   # (two backends at a time: --jobs 2)
    python3 scripts/dev.py test --backends jax -- -k prelu   # a subset
    python3 scripts/dev.py run --backend jax benchmarks/latency.py

The environment is a virtualenv in `.venv/` beside this folder, made and
filled on first use (and again whenever pyproject.toml changes).
"""

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".keras_collapse_installed"
BACKENDS = ("tensorflow", "jax", "torch")
# torch first and pinned: this is the CPU build that lies on the CI machines'
# disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC = "torch==2.13.0"
# keras-hub (the model zoo the tests build backbones from) depends on
# tensorflow-text, which drags in a second, full TensorFlow: install it alone
# and give it what it imports (regex and tokenizers come with the `test` extra).
KERAS_HUB_SPEC = "keras-hub==0.32.0"
# keras-cv's last release depends on keras-core and kagglehub it never needs
# here; install it alone, with what its import reads.
KERAS_CV_SPEC = "keras-cv==0.9.0"
KERAS_CV_IMPORTS = ["dm-tree", "tensorflow-datasets"]
FASHION_MNIST_DEB = Path("/usr/share/datasets/fashion-mnist")


def run(cmd, **kwargs):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def setup():
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"Creating a virtualenv in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [
        str(PYTHON),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    run(pip + [TORCH_SPEC])
    run(pip + ["-e", f"{ROOT}[tensorflow,jax,torch,test,examples,export]"])
    run(pip + ["--no-deps", KERAS_HUB_SPEC])
    run(pip + ["--no-deps", KERAS_CV_SPEC])
    run(pip + KERAS_CV_IMPORTS)
    STAMP.write_text(wanted)


def isolated_env(backend, for_tests=False):
    """Environment for a child process: its own KERAS_HOME, one backend."""
    home = Path(tempfile.mkdtemp(prefix="keras_collapse_home_"))
    _offer_fashion_mnist(home)
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND=backend,
        KERAS_HOME=str(home),
        MPLCONFIGDIR=str(home / "mpl"),
        MPLBACKEND="Agg",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONHASHSEED="0",
    )
    if for_tests:
        # Tests compile hundreds of tiny graphs once each: XLA's optimizer
        # costs more than it saves there (about 2x on the JAX suite).
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
        ).strip()
    return env


def _offer_fashion_mnist(home):
    """Lets keras.datasets.fashion_mnist load offline from the Debian package."""
    if not FASHION_MNIST_DEB.is_dir():
        return
    target = home / "datasets" / "fashion-mnist"
    target.mkdir(parents=True, exist_ok=True)
    for f in FASHION_MNIST_DEB.iterdir():
        if f.name.endswith(".gz") and not (target / f.name).exists():
            (target / f.name).symlink_to(f)


def test(backends, pytest_args, jobs=1):
    """One pytest process per backend, `jobs` of them at a time; each one's
    output is printed whole when it ends, then a summary."""
    setup()
    summary, failed = {}, False
    pending, running = list(backends), []
    while pending or running:
        while pending and len(running) < jobs:
            backend = pending.pop(0)
            running.append(_start_pytest(backend, pytest_args, parallel=jobs > 1))
        time.sleep(0.5)
        for job in [j for j in running if j["proc"].poll() is not None]:
            running.remove(job)
            job["log"].seek(0)
            output = job["log"].read()
            job["log"].close()
            print(f"\n===== pytest on KERAS_BACKEND={job['backend']} =====", flush=True)
            sys.stdout.write(output)
            # pytest exits 5 when nothing was collected: that is a failure here.
            failed |= job["proc"].returncode != 0
            summary[job["backend"]] = (
                job["proc"].returncode,
                _counts(output),
                time.time() - job["start"],
            )
    print("\n===== per-backend results =====")
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for backend in backends:
        code, counts, seconds = summary[backend]
        print(f"{backend:>10}: exit {code}, " + _fmt(counts) + f" in {seconds:.0f}s")
        for k in totals:
            totals[k] += counts.get(k, 0) + (
                counts.get("errors", 0) if k == "failed" else 0
            )
    print(
        f"all backends: {totals['passed']} passed, {totals['failed']} failed, "
        f"{totals['skipped']} skipped"
    )
    return 1 if failed else 0


def _start_pytest(backend, pytest_args, parallel):
    env = isolated_env(backend, for_tests=True)
    if parallel:
        # Two suites share the cores: one compute thread each, or their
        # thread pools wait on each other (torch's OpenMP most of all).
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [str(PYTHON), "-m", "pytest", "-p", "no:cacheprovider", *pytest_args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    print(f"started pytest on KERAS_BACKEND={backend}", flush=True)
    return {"backend": backend, "proc": proc, "log": log, "start": time.time()}


def _counts(output):
    lines = [
        ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)
    ]
    counts = {}
    for n, word in re.findall(
        r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)",
        lines[-1] if lines else "",
    ):
        counts["errors" if word.startswith("error") else word] = int(n)
    return counts


def _fmt(counts):
    return ", ".join(f"{v} {k}" for k, v in counts.items()) or "no result line"


def run_script(backend, script, extra):
    """Runs a script of the project in the environment, on one backend, with
    Fashion-MNIST offered offline when the Debian package has it."""
    setup()
    cmd = [str(PYTHON), str(script), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=isolated_env(backend)).returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=["setup", "test", "demo", "run"])
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated, for `test`. Default: all three",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="for `test`: backends tested at once. Default: 2 (1 on one core)",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("KERAS_BACKEND", "jax"),
        help="for `demo` and `run`. Default: $KERAS_BACKEND or jax",
    )
    argv, passthrough = sys.argv[1:], []
    if argv and argv[0] == "run":
        # Everything after the script is the script's own (`--backends` too).
        script = next((i for i, a in enumerate(argv) if a.endswith(".py")), None)
        if script is not None:
            argv, passthrough = argv[: script + 1], argv[script + 1 :]
    args, rest = parser.parse_known_args(argv)
    rest = [a for a in rest if a != "--"] + passthrough
    if args.job == "setup":
        setup()
        return 0
    if args.job == "test":
        backends = [b for b in args.backends.split(",") if b]
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            parser.error(f"unknown backend(s) {sorted(unknown)}; expected {BACKENDS}")
        if args.jobs < 1:
            parser.error(f"--jobs must be at least 1; received {args.jobs}")
        return test(backends, rest, args.jobs)
    if args.job == "run":
        if not rest:
            parser.error("`run` needs a script: dev.py run [--backend B] SCRIPT [ARGS]")
        return run_script(args.backend, rest[0], rest[1:])
    return run_script(args.backend, ROOT / "examples" / "collapse_digits.py", rest)


if __name__ == "__main__":
    sys.exit(main())
