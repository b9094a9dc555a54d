"""The `keras-collapse` command line (keras_collapse/cli/).

The main commands and a few errors run as subprocesses (`python -m
keras_collapse` and the installed console script), on the test's backend;
each one that imports keras costs seconds, so they are few, share their
model files, and start together (two at a time) in one module fixture.
`--help` and usage errors must not import keras at all. The other error
paths and options call `cli.main` in this process.
"""

import concurrent.futures
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_collapse as kc
from keras_collapse import cli

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / (
    "keras-collapse.exe" if os.name == "nt" else "keras-collapse"
)
# What TensorFlow's C++ side prints before its log level applies (absl's
# preamble and the oneDNN line), on any backend once Keras imports it.
TF_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] )"
)


def conv_bn_relu_model():
    """Conv/BN/ReLU twice, with BN statistics far from the identity."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(6, 1, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    rng = np.random.default_rng(0)
    for layer in (model.get_layer("bn1"), model.get_layer("bn2")):
        c = layer.gamma.shape[0]
        layer.set_weights(
            [
                rng.uniform(0.5, 1.5, c),
                rng.normal(0.0, 1.0, c),
                rng.normal(0.0, 0.5, c),
                rng.uniform(0.5, 2.0, c),
            ]
        )
    return model


def compiled_mlp():
    """Three hidden Dense/ReLU layers, compiled (what `collapse` needs)."""
    inputs = keras.Input((12,), name="features")
    h = inputs
    for i in range(3):
        h = keras.layers.Dense(16, activation="relu", name=f"hidden{i}")(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(h), name="mlp")
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The saved models (and not-models) every test reads."""
    folder = tmp_path_factory.mktemp("cli")
    plain = conv_bn_relu_model()
    collapsible = kc.make_collapsible(plain)
    kc.lock_linear(collapsible, "relu1")  # conv1 and conv2 can merge
    inputs = keras.Input((4,))
    hidden = keras.layers.Lambda(lambda z: z * 2.0, name="double")(inputs)
    with_lambda = keras.Model(inputs, keras.layers.Dense(3)(hidden), name="with_lambda")
    without_bn = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="relu")], name="no_bn"
    )
    paths = {
        name: folder / f"{name}.keras"
        for name in ("plain", "collapsible", "lambda", "no_bn")
    }
    plain.save(paths["plain"])
    collapsible.save(paths["collapsible"])
    with_lambda.save(paths["lambda"])
    without_bn.save(paths["no_bn"])
    compiled = compiled_mlp()
    compiled.save(folder / "compiled.keras")
    paths["compiled"] = folder / "compiled.keras"
    rng = np.random.default_rng(0)
    for name, rows in (("train", 256), ("val", 64)):
        x = rng.standard_normal((rows, 12)).astype("float32")
        y = (x[:, :4].argmax(axis=1)).astype("int64")  # learnable
        np.savez(folder / f"{name}.npz", x=x, y=y)
        paths[name] = folder / f"{name}.npz"
    np.savez(folder / "rows.npz", x=np.zeros((5, 12), "float32"), y=np.zeros(4))
    np.savez(folder / "wide.npz", x=np.zeros((5, 7), "float32"), y=np.zeros(5))
    np.savez(folder / "nox.npz", inputs=np.zeros((5, 12)), y=np.zeros(5))
    paths["h5"] = folder / "model.h5"
    paths["h5"].write_bytes(b"\x89HDF\r\n\x1a\n")
    paths["junk"] = folder / "junk.keras"
    paths["junk"].write_text("not a zip archive")
    paths["folder"] = folder
    return paths


def run_python(code, *args, cwd=ROOT, backend=None, timeout=600):
    """Runs `code` in a new interpreter, on this test's backend unless told."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=dict(os.environ, KERAS_BACKEND=backend or keras.backend.backend()),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(args, script=False, **env_vars):
    """Runs the CLI in a new interpreter on this test's backend."""
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "keras_collapse"]
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    env.update(env_vars)
    env.pop(cli.DEBUG_VARIABLE, None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's default (2) applies
    return subprocess.run(
        command + [str(a) for a in args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def runs(files):
    """The subprocess runs, started together (two at a time) and shared."""
    out, report, info, collapsed, collapse_report = (
        files["folder"] / name
        for name in (
            "small.keras",
            "report.json",
            "info.json",
            "collapsed.keras",
            "collapse.json",
        )
    )
    commands = {
        "help": (["--help"], False),
        "inspect": (["inspect", files["collapsible"], "--json", info], True),
        "surgery": (
            ["surgery", files["collapsible"], out, "--report", report],
            False,
        ),
        "missing": (["inspect", files["folder"] / "missing.keras"], False),
        "lambda_refused": (["inspect", files["lambda"]], False),
        "collapse": (
            [
                "collapse",
                files["compiled"],
                collapsed,
                "--data",
                files["train"],
                "--validation",
                files["val"],
                "--target",
                "0.5",
                "--epochs",
                "2",
                "--batch-size",
                "64",
                "--no-latency",
                "--report",
                collapse_report,
            ],
            True,
        ),
    }
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    futures = {
        name: pool.submit(run_cli, args, script)
        for name, (args, script) in commands.items()
    }
    yield {
        "futures": futures,
        "out": out,
        "report": report,
        "info": info,
        "collapsed": collapsed,
        "collapse_report": collapse_report,
    }
    pool.shutdown(wait=True)


def result(runs, name):
    return runs["futures"][name].result()


def error_lines(stderr):
    """stderr without TensorFlow's unsilenceable C++ lines."""
    return [line for line in stderr.splitlines() if not TF_NOISE.match(line)]


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("keras-collapse: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def load(path, safe_mode=True):
    return keras.saving.load_model(str(path), safe_mode=safe_mode)


# ------------------------------------------------------------ subprocesses
def test_help_lists_commands_and_safe_mode(runs):
    proc = result(runs, "help")
    assert proc.returncode == 0, proc.stderr
    for word in (
        "inspect",
        "surgery",
        "collapse",
        "--version",
        "safe mode",
        "--unsafe",
    ):
        assert word in proc.stdout, word
    assert cli.DEBUG_VARIABLE in proc.stdout


def test_console_script_is_installed():
    try:
        points = importlib.metadata.entry_points(group="console_scripts")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        pytest.skip("keras-collapse is not installed (pip install -e .)")
    targets = {p.name: p.value for p in points}
    assert targets.get("keras-collapse") == "keras_collapse.cli:main"
    assert SCRIPT.exists()


def test_inspect_prints_stats_collapsible_layers_and_bn_analysis(runs, files):
    proc = result(runs, "inspect")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    model = load(files["collapsible"])
    stats = kc.model_stats(model)
    text = proc.stdout
    assert re.search(rf"Depth \(weight layers\) +{stats.depth}\n", text)
    assert re.search(rf"Parameters +{stats.params:,}\n", text)
    assert re.search(rf"MACs per sample +{stats.macs:,}\n", text)
    assert re.search(r"relu1 +relu +1 +yes +yes\n", text)
    assert re.search(r"relu2 +relu +0 +no +no\n", text)
    assert "BatchNorm ON/OFF analysis (2 activations" in text
    analysis = kc.analyze_batchnorm(model)
    for layer in analysis:
        assert re.search(
            rf"{layer.name} +{layer.activation} +{layer.batchnorm} +6 .* "
            rf"{layer.score:.3f} ",
            text,
        ), layer.name

    info = json.loads(runs["info"].read_text())
    assert info["stats"] == stats.as_dict()
    assert info["model"] == "tiny"
    assert info["inputs"] == [[None, 8, 8, 3]]
    assert [(c["name"], c["linear"], c["locked"]) for c in info["collapsible"]] == [
        ("relu1", True, True),
        ("relu2", False, False),
    ]
    assert info["collapsible"][0]["alpha_mean"] == 1.0
    assert info["batchnorm_layers"] == 2
    assert info["batchnorm_analysis_of"] == "model"
    layers = info["batchnorm_analysis"]["layers"]
    assert [(s["name"], s["batchnorm"]) for s in layers] == [
        ("relu1", "bn1"),
        ("relu2", "bn2"),
    ]
    np.testing.assert_allclose(
        [s["score"] for s in layers], [s.score for s in analysis], rtol=1e-6
    )


def test_surgery_saves_a_shallower_model_with_the_same_outputs(runs, files):
    proc = result(runs, "surgery")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith("Surgery (exact)")
    assert f"Saved {runs['out']}" in proc.stdout
    original, small = load(files["collapsible"]), load(runs["out"])
    x = np.random.default_rng(3).standard_normal((16, 8, 8, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(original(x, training=False))
    actual = keras.ops.convert_to_numpy(small(x, training=False))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization) for layer in small.layers
    )
    assert kc.model_stats(small).depth == 2  # conv1 and conv2 merged


def test_surgery_report_json_matches_both_files(runs, files):
    assert result(runs, "surgery").returncode == 0
    report = json.loads(runs["report"].read_text())
    before = kc.model_stats(load(files["collapsible"])).as_dict()
    after = kc.model_stats(load(runs["out"])).as_dict()
    assert report["before"] == before
    assert report["after"] == after
    assert report["after"]["depth"] < report["before"]["depth"]
    assert report["input"] == str(files["collapsible"])
    assert report["output"] == str(runs["out"])
    assert report["exact"] is True
    assert 0 <= report["deviation"] <= report["tolerance"] == 1e-5
    assert ["conv1", "conv2"] in [
        e["layers"] for e in report["done"] if e["kind"] == "merge"
    ]
    assert {e["kind"] for e in report["done"]} >= {"fold_bn", "merge"}


def test_missing_file_is_one_line(runs, files):
    line = assert_one_line_error(result(runs, "missing"), "missing.keras")
    assert "no such file" in line


def test_lambda_model_is_refused_in_safe_mode(runs):
    line = assert_one_line_error(result(runs, "lambda_refused"), "safe mode")
    assert "--unsafe" in line


NO_KERAS = """
import sys
from keras_collapse.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
loaded = sorted(
    m for m in ("keras", "tensorflow", "jax", "torch", "numpy") if m in sys.modules
)
print("exit", code, "loaded", loaded, file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [["--help"], ["collapse", "--help"], ["collapse", "a.keras"], ["frobnicate"]],
)
def test_help_and_usage_errors_import_no_keras(args):
    proc = run_python(NO_KERAS, *args, backend="not-a-backend", timeout=120)
    last = proc.stderr.splitlines()[-1]
    assert last.endswith("loaded []"), proc.stderr
    assert last.startswith("exit 0" if "--help" in args else "exit 2"), last
    if "--help" in args:
        assert "usage: keras-collapse" in proc.stdout


def test_import_keras_collapse_imports_no_keras_until_a_name_is_used():
    code = (
        "import sys, keras_collapse as kc\n"
        "assert 'keras' not in sys.modules, 'keras imported'\n"
        "assert set(kc.__all__) <= set(dir(kc)), 'dir() misses names'\n"
        "assert 'inspect' in kc.__all__ and 'collapse' in kc.__all__\n"
        "f = kc.surgery\n"
        "assert 'keras' in sys.modules and callable(f)\n"
        "import keras_collapse.collapse\n"
        "assert callable(kc.collapse), kc.collapse  # the function, not the module\n"
        "print('ok')"
    )
    proc = run_python(code)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_import_keras_collapse_registers_its_layers_for_load_model(files):
    # A collapsible model saved mid-way loads after `import keras_collapse`
    # alone, whether keras is imported before or after it.
    for first, second in (("keras_collapse", "keras"), ("keras", "keras_collapse")):
        code = (
            f"import {first}, {second}, sys\n"
            f"m = keras.saving.load_model({str(files['collapsible'])!r})\n"
            "print(type(m.get_layer('relu1')).__name__)"
        )
        proc = run_python(code)
        assert proc.stdout.strip() == "CollapsiblePReLU", proc.stderr[-2000:]


def test_invalid_backend_is_one_line(files):
    proc = run_cli(["inspect", files["plain"]], KERAS_BACKEND="nope")
    line = assert_one_line_error(proc, "KERAS_BACKEND='nope'", "tensorflow")
    assert "Traceback" not in proc.stderr and line


def test_inspect_prints_the_potential_without_tensorflow_noise(runs, files):
    proc = result(runs, "inspect")
    assert "oneDNN" not in proc.stderr and "absl" not in proc.stderr, proc.stderr
    assert "Potential: linearizing every merge unit" in proc.stdout
    info = json.loads(runs["info"].read_text())
    model = load(files["collapsible"])
    expected = kc.inspect(model).potential.as_dict()
    for field in ("depth", "params", "macs", "latency"):
        assert info["potential"][field] == expected[field], field
        assert set(info["potential"][field]) == {"saved", "total", "share"}
    assert info["potential_of"] == "model"


def test_collapse_saves_plain_keras_that_matches_the_report(runs, files, tmp_path):
    proc = result(runs, "collapse")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.count("Collapse (activations, target 0.5, 2 epoch(s)") == 1
    assert f"Saved {runs['collapsed']}" in proc.stdout
    report = json.loads(runs["collapse_report"].read_text())
    assert report["input"] == str(files["compiled"])
    assert report["data"] == str(files["train"])
    assert report["candidates"] == 3 and len(report["linearized"]) == 2
    small = load(runs["collapsed"])
    assert kc.model_stats(small).as_dict() == report["after"]
    assert report["after"]["depth"] < report["before"]["depth"]
    # Plain Keras: a fresh interpreter loads it without keras_collapse, and
    # it scores on the validation rows what the report says.
    code = (
        "import json, sys, numpy as np, keras\n"
        f"m = keras.saving.load_model({str(runs['collapsed'])!r})\n"
        f"d = np.load({str(files['val'])!r})\n"
        "r = m.evaluate(d['x'], d['y'], verbose=0, return_dict=True)\n"
        "assert 'keras_collapse' not in sys.modules\n"
        "print(json.dumps({k: float(v) for k, v in r.items()}))"
    )
    fresh = run_python(code, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    metrics = json.loads(fresh.stdout.strip().splitlines()[-1])
    for name, value in report["metrics_after"].items():
        assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


# -------------------------------------------------------------- in process
def main(capsys, *args):
    """`cli.main(args)` here: `(exit code, stdout, stderr)`."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse: --help, --version, usage errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_error(outcome, *fragments):
    code, _, err = outcome
    assert code == 1, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-collapse: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unsafe_loads_a_lambda_model(capsys, files):
    code, out, err = main(capsys, "inspect", files["lambda"], "--unsafe")
    assert code == 0, err
    assert "Model 'with_lambda'" in out
    assert re.search(r"Parameters +15\n", out)  # Dense(4 -> 3)
    assert "No BatchNormalization layers" in out


def test_unsafe_surgery_of_a_lambda_model(capsys, files, tmp_path):
    # Issue 23: the Lambda is kept as it is, not refused as a layer without
    # a config.
    out = tmp_path / "small_lambda.keras"
    code, text, err = main(capsys, "surgery", files["lambda"], out, "--unsafe")
    assert code == 0, err
    assert f"Saved {out}" in text
    x = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    original = load(files["lambda"], safe_mode=False)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(load(out, safe_mode=False)(x)),
        keras.ops.convert_to_numpy(original(x)),
        atol=1e-5,
    )


def test_version(capsys):
    code, out, _ = main(capsys, "--version")
    assert code == 0
    assert out.startswith(f"keras-collapse {kc.__version__} (keras ")


def test_command_help_mentions_safe_mode_and_options(capsys):
    code, out, _ = main(capsys, "surgery", "--help")
    assert code == 0
    for word in ("--no-exact", "--tolerance", "--no-verify", "--report", "Lambda"):
        assert word in out, word


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["surgery", "only_one.keras"],
        ["inspect", "m.keras", "--confidence", "2"],
        ["surgery", "a.keras", "b.keras", "--tolerance", "-1"],
        ["inspect", "m.keras", "--input-shape", "8,x,3"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(capsys, args):
    code, _, err = main(capsys, *args)
    assert code == 2
    assert "keras-collapse" in err and "error:" in err


def test_file_checks(capsys, files):
    never = files["folder"] / "never.keras"
    outcome = main(capsys, "surgery", files["h5"], never)
    assert_error(outcome, "model.h5", "not a .keras file", ".save('model.keras')")
    assert not never.exists()
    assert_error(main(capsys, "inspect", files["junk"]), "not a valid .keras file")
    assert_error(main(capsys, "inspect", files["folder"]), "is a directory")


def test_surgery_output_checks_write_nothing(capsys, files):
    source = files["collapsible"]
    folder = files["folder"]
    assert_error(
        main(capsys, "surgery", source, folder / "out.h5"), "must end in .keras"
    )
    assert_error(main(capsys, "surgery", source, source), "is also the input")
    assert_error(
        main(capsys, "surgery", source, folder / "nowhere" / "out.keras"),
        "does not exist",
    )
    assert sorted(p.name for p in folder.glob("out*")) == []


def test_surgery_verification_error_is_one_line(capsys, files):
    target = files["folder"] / "unverified.keras"
    # BN folding changes the float32 round-off: far above 1e-30.
    outcome = main(
        capsys, "surgery", files["collapsible"], target, "--tolerance", "1e-30"
    )
    assert_error(outcome, "does not compute what", "--tolerance")
    assert not target.exists()


def test_surgery_options_reach_the_report(capsys, files):
    target = files["folder"] / "unchecked.keras"
    report = files["folder"] / "unchecked.json"
    code, out, err = main(
        capsys,
        "surgery",
        files["collapsible"],
        target,
        "--no-exact",
        "--no-verify",
        "--report",
        report,
    )
    assert code == 0, err
    assert out.startswith("Surgery (inexact")
    data = json.loads(report.read_text())
    assert data["exact"] is False and data["deviation"] is None
    assert load(target).count_params() == data["after"]["params"]


def test_inspect_plain_model_analyses_it_as_make_collapsible_would(capsys, files):
    code, out, err = main(capsys, "inspect", files["plain"], "--json", "-")
    assert code == 0, err
    info = json.loads(out)  # stdout is the JSON alone
    assert info["collapsible"] == []
    assert info["batchnorm_analysis_of"] == "make_collapsible(model)"
    converted = kc.make_collapsible(load(files["plain"]))
    expected = kc.analyze_batchnorm(converted).as_dict()
    assert [s["name"] for s in info["batchnorm_analysis"]["layers"]] == [
        "relu1",
        "relu2",
    ]
    np.testing.assert_allclose(
        [s["score"] for s in info["batchnorm_analysis"]["layers"]],
        [s["score"] for s in expected["layers"]],
        rtol=1e-6,
    )
    assert all(s["linearized"] is False for s in info["batchnorm_analysis"]["layers"])


def test_inspect_without_batchnorm_and_with_input_shape(capsys, files):
    code, out, err = main(capsys, "inspect", files["no_bn"], "--input-shape", "5")
    assert code == 0, err
    assert "No BatchNormalization layers: no BN analysis." in out
    assert "BatchNorm ON/OFF analysis" not in out
    assert re.search(r"MACs per sample +20\n", out)


def test_unexpected_errors_are_one_line_unless_debugging(capsys, files, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(kc, "inspect", boom)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    assert_error(
        main(capsys, "inspect", files["plain"]),
        "unexpected RuntimeError: boom second line",
        cli.DEBUG_VARIABLE,
    )
    monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["inspect", str(files["plain"])])
    with pytest.raises(cli.CLIError, match="no such file"):
        cli.main(["inspect", str(files["folder"] / "missing.keras")])


def test_interrupt_exits_130(capsys, files, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kc, "inspect", interrupted)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    code, _, err = main(capsys, "inspect", files["plain"])
    assert code == 130
    assert err == "keras-collapse: error: interrupted\n"


def test_json_ready_makes_strict_json():
    value = {1: (np.float32(0.5), float("nan")), "a": np.arange(2), "b": [np.inf]}
    text = json.dumps(cli.json_ready(value), allow_nan=False)
    assert json.loads(text) == {"1": [0.5, None], "a": [0, 1], "b": [None]}


def test_collapse_errors_are_one_line_and_write_nothing(capsys, files):
    folder = files["folder"]
    out = folder / "never_collapsed.keras"
    common = ["collapse", files["compiled"], out]
    assert_error(
        main(capsys, *common, "--data", folder / "missing.npz"),
        "--data",
        "missing.npz: no such file",
    )
    assert_error(
        main(capsys, *common, "--data", folder / "rows.npz"),
        "as many rows",
        "(5, 12)",
        "(4,)",
    )
    assert_error(
        main(capsys, *common, "--data", folder / "wide.npz"),
        "x has shape (5, 7)",
        "(rows, 12)",
    )
    assert_error(
        main(capsys, *common, "--data", folder / "nox.npz"), "expected x", "'inputs'"
    )
    assert_error(
        main(capsys, *common, "--data", files["train"], "--validation", files["h5"]),
        "--validation",
        "not an .npz file",
    )
    assert_error(
        main(capsys, "collapse", files["plain"], out, "--data", files["train"]),
        "without a compiled loss",
        "model.compile(",
    )
    assert not out.exists()


def test_collapse_usage_errors_exit_2(capsys, files):
    base = ["collapse", files["compiled"], "o.keras", "--data", files["train"]]
    for extra in (
        ["--target", "0"],
        ["--target", "1.5"],
        ["--epochs", "0"],
        ["--objective", "speed"],
        ["--batch-size", "x"],
    ):
        code, _, err = main(capsys, *base, *extra)
        assert code == 2, extra
        assert extra[0] in err, err
    code, _, err = main(capsys, "collapse", files["compiled"], "o.keras")
    assert code == 2 and "--data" in err


def test_objectives_are_the_librarys():
    from keras_collapse.surgery.units import OBJECTIVES

    assert cli.OBJECTIVES == OBJECTIVES


def test_tensorflow_lines_are_filtered_once_at_most():
    from keras_collapse.cli.startup import quiet

    banner = (
        "I0000 00:00:1796292397.213292   10039 port.cc:153] oneDNN custom "
        "operations are on."
    )
    preamble = (
        "WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR"
    )
    text = "\n".join([preamble, banner, preamble, banner, "a warning of ours"])
    assert quiet(text, level=2) == "a warning of ours\n"
    kept = quiet(text, level=0).splitlines()
    assert kept == [banner, "a warning of ours"]
