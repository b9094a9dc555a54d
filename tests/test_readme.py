"""README.md runs as shown: every ```python block, in a fresh process on the
current backend, prints what the README says it prints.

Conventions in README.md (see `snippets`):

- every ```python block runs on its own: imports, data, everything;
- `<!-- not-run: reason -->` on the line before a block leaves it out (to be
  used sparingly: a block that cannot run is one a reader cannot trust);
- `<!-- output -->` on the line before a ```text block: what the nearest
  ```python block above it prints. Its lines must appear in that block's
  stdout, contiguous and in order, each from the start of a line; `...`
  matches any text (doctest's ELLIPSIS); trailing spaces are ignored.

Besides, the API table's signatures agree with the code, and the commands
block at the top holds exactly the two commands.
"""

import ast
import dataclasses
import doctest
import inspect
import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

import keras_collapse as kc
from tests.testing import SLOW_OFF_TORCH
from tests.testing import require
from tests.testing import trains

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.+?)\s*-->$")
OUTPUT = re.compile(r"^<!--\s*output\s*-->$")
FENCE = re.compile(r"^```(?P<info>\S*)\s*$")
STDLIB = set(sys.stdlib_module_names)
# A snippet trains small models for a few epochs: seconds, but far more when
# other jobs share the CPUs.
TIMEOUT = 900


@dataclasses.dataclass
class Snippet:
    heading: str
    index: int  # 1-based, among the runnable blocks under `heading`
    line: int  # of the opening fence, 1-based
    code: str
    outputs: list = dataclasses.field(default_factory=list)  # expected prints
    source: str = "README.md"

    @property
    def id(self):
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        if len(slug) > 40:  # cut at a word
            slug = slug[:41].rsplit("-", 1)[0]
        page = (
            "" if self.source == "README.md" else f"{pathlib.Path(self.source).stem}-"
        )
        return f"{page}{slug}-{self.index}"


def fenced_blocks(text):
    """Yields `(info, body, line, marker, heading)` per fenced block: `line`
    is the opening fence's (1-based), `marker` the non-blank line before it
    ("" if none), `heading` the title of the section it is in."""
    lines = text.splitlines()
    i, heading = 0, ""
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        match = FENCE.match(line)
        if match:
            before = [x.strip() for x in lines[:i] if x.strip()]
            end = next(
                (j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"),
                None,
            )
            if end is None:
                raise AssertionError(f"README.md:{i + 1}: unclosed ``` block")
            body = "\n".join(lines[i + 1 : end]) + "\n"
            yield match["info"], body, i + 1, (before[-1] if before else ""), heading
            i = end
        i += 1


def snippets(path=README):
    """The runnable ```python blocks of a Markdown file, with the outputs
    their `<!-- output -->` blocks promise."""
    found, last, counts = [], None, {}
    for info, body, line, marker, heading in fenced_blocks(path.read_text()):
        if OUTPUT.match(marker):
            if info != "text" or last is None:
                raise AssertionError(
                    f"{path.name}:{line}: `<!-- output -->` must precede a ```text "
                    "block that follows a runnable ```python block"
                )
            last.outputs.append(body)
            continue
        if info != "python":
            continue
        if NOT_RUN.match(marker):
            last = None
            continue
        if marker.startswith("<!--"):
            raise AssertionError(f"{path.name}:{line}: unknown marker {marker!r}")
        counts[heading] = counts.get(heading, 0) + 1
        last = Snippet(heading, counts[heading], line, body, source=path.name)
        found.append(last)
    return found


# docs/ pages whose examples run as well (the others show code for tools
# the suite does not drive, e.g. exporters).
DOCS = [ROOT / "docs" / "composite_layers.md"]
SNIPPETS = snippets() + [s for page in DOCS for s in snippets(page)]


def prints(expected, stdout):
    """Whether `expected` appears in `stdout` as whole lines (ELLIPSIS)."""
    clean = "".join(f"{line.rstrip()}\n" for line in stdout.splitlines())
    want = "".join(f"{line.rstrip()}\n" for line in expected.strip("\n").split("\n"))
    return doctest.OutputChecker().check_output(
        "...\n" + want + "...", "\n" + clean, doctest.ELLIPSIS
    )


def run_snippet(snippet, cwd):
    script = pathlib.Path(cwd) / f"readme_{snippet.id}.py"
    script.write_text(snippet.code)
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.setdefault("MPLBACKEND", "Agg")
    # One thread each: the suite's processes share the CPUs, and torch's
    # threads make a small fit ~50x slower when the CPUs are oversubscribed.
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def optional_modules(code):
    """The optional packages a snippet needs: what it imports besides keras,
    keras_collapse and numpy, and matplotlib if it plots."""
    needed = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            needed.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            needed.add(node.module.split(".")[0])
    if ".plot(" in code:
        needed.add("matplotlib")
    return sorted(needed - {"keras", "keras_collapse", "numpy"} - STDLIB)


@pytest.mark.parametrize(
    "snippet",
    [pytest.param(s, marks=SLOW_OFF_TORCH if trains(s.code) else []) for s in SNIPPETS],
    ids=[s.id for s in SNIPPETS],
)
def test_snippet_runs_as_shown(snippet, tmp_path):
    for module in optional_modules(snippet.code):
        require(module, f"the README snippet {snippet.id}")
    proc = run_snippet(snippet, tmp_path)
    where = (
        f"{snippet.source}:{snippet.line} ({snippet.heading!r}, block {snippet.index})"
    )
    assert proc.returncode == 0, (
        f"{where} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    for expected in snippet.outputs:
        assert prints(expected, proc.stdout), (
            f"{where} did not print what {snippet.source} shows after it.\n"
            f"--- {snippet.source} shows:\n{expected}--- it printed:\n{proc.stdout}"
        )


def test_optional_modules():
    code = "import os\nimport keras\nfrom sklearn.datasets import x\nm.plot()\n"
    assert optional_modules(code) == ["matplotlib", "sklearn"]


def test_readme_has_runnable_snippets_with_outputs():
    assert len(SNIPPETS) >= 4
    assert sum(len(s.outputs) for s in SNIPPETS) >= 3
    assert len({s.id for s in SNIPPETS}) == len(SNIPPETS)


def test_prints_matches_whole_lines_with_ellipsis():
    out = "a\nlocked: ['x']\nmax deviation 1.2e-07 (tol 1e-05)   \nz\n"
    assert prints("locked: ['x']\nmax deviation ... (tol 1e-05)", out)
    assert prints("a", out) and prints("z", out)
    assert not prints("ocked: ['x']", out)
    assert not prints("a\nz", out)
    assert not prints("locked: ['y']", out)


def test_snippets_reads_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n```python\nprint(1)\n```\n\n<!-- output -->\n```text\n1\n```\n"
        "\n## Part two\n\n<!-- not-run: needs a GPU -->\n```python\nimport gpu\n```\n"
        "\n```python\nprint(2)\n```\n\n```bash\nls\n```\n\n```\n# not a heading\n```\n"
        "\n```python\nprint(3)\n```\n"
    )
    found = snippets(page)
    assert [(s.id, s.code, s.outputs) for s in found] == [
        ("page-title-1", "print(1)\n", ["1\n"]),
        ("page-part-two-1", "print(2)\n", []),
        ("page-part-two-2", "print(3)\n", []),
    ]


def test_commands_block_holds_the_two_commands():
    info, body, *_ = next(fenced_blocks(README.read_text()))
    commands = [line.split("#")[0].strip() for line in body.splitlines()]
    assert info == "bash"
    assert [c for c in commands if c] == [
        "python3 scripts/dev.py demo",
        "python3 scripts/dev.py test",
    ]


def api_signatures():
    """`(name, text)` of every `name(args)` in the API table's first column."""
    text = README.read_text()
    table = text.split("## API", 1)[1].split("\n## ", 1)[0]
    found = []
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        first = row.split(" | ")[0]
        for code in re.findall(r"`([^`]+)`", first):
            match = re.fullmatch(r"(\w+)\((.*)\)", code)
            if match and hasattr(kc, match[1]):
                found.append((match[1], match[2]))
    return found


API = api_signatures()


@pytest.mark.parametrize("name, args", API, ids=[name for name, _ in API])
def test_api_table_signature(name, args):
    """Every parameter the table lists exists, with the default it states
    (`...` stands for parameters left out, `**engine` for `**kwargs`)."""
    args = re.sub(r",\s*\.\.\.", "", args)
    call = ast.parse(f"f({args})", mode="eval").body
    actual = inspect.signature(getattr(kc, name)).parameters
    listed = [(a.id, inspect.Parameter.empty) for a in call.args]
    listed += [(k.arg, ast.literal_eval(k.value)) for k in call.keywords if k.arg]
    for param, default in listed:
        assert param in actual, f"README lists {name}({param}=...), the code has not"
        assert actual[param].default == default, (
            f"README says {name}({param}={default!r}); the code's default is "
            f"{actual[param].default!r}"
        )
    if any(k.arg is None for k in call.keywords):
        kinds = [p.kind for p in actual.values()]
        assert inspect.Parameter.VAR_KEYWORD in kinds


def test_api_table_is_read():
    names = {name for name, _ in API}
    assert {"surgery", "make_collapsible", "TLCCallback", "lock_near_linear"} <= names


def api_tables():
    """`(public, internal)`: the code names in the first column of the API
    table and of its "Results and internals" table."""
    section = README.read_text().split("## API", 1)[1].split("\n## ", 1)[0]
    public, internal = section.split("### Results and internals", 1)

    def first_column_names(text):
        names = set()
        for row in text.splitlines():
            if row.startswith("| `"):
                first = row.split(" | ")[0]
                names |= set(re.findall(r"`(\w+)(?:\(.*?\))?`", first))
        return names

    return first_column_names(public), first_column_names(internal)


def test_api_table_documents_every_public_name():
    public, _ = api_tables()
    missing = sorted(set(kc.__all__) - public)
    assert not missing, f"in kc.__all__ but not in README's API table: {missing}"
    # A row for a name users cannot reach at kc.<name> would mislead.
    unknown = sorted(n for n in public if not hasattr(kc, n) and n != "layer")
    assert not unknown, f"README's API table lists names kc lacks: {unknown}"


def test_api_table_says_where_the_internals_went():
    _, internal = api_tables()
    missing = sorted(set(kc._INTERNALS) - internal)
    assert not missing, f"old top-level names the README does not place: {missing}"
    assert not internal & set(kc.__all__), "a public name listed as internal"


def test_layout_lists_every_moved_module():
    layout = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    row = re.compile(r"^\| `(keras_collapse[\w.]*)` \| `([\w.]+)` \|$", re.M)
    rows = dict(row.findall(layout))
    assert rows == kc._MOVED
