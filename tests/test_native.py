"""The compiled core (mypyc) and the pure-Python one are one program.

The suite runs on whatever the install built: compiled where a C compiler
was there (CI requires it, ``FINTRACE_REQUIRE_COMPILED=1``). These tests run
the other form in a child process (``FINTRACE_PURE=1``) and compare, and
check how fintrace picks between the two (``fintrace/_native.py``) and how
the build falls back to pure Python (``setup.py``).
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import fintrace
from fintrace import _native

from conftest import CAPTURES, ROOT, capture_files, corpus_files

if TYPE_CHECKING:
    from fintrace.model import Record

PACKAGE = Path(fintrace.__file__).resolve().parent
REQUIRE_COMPILED = os.environ.get("FINTRACE_REQUIRE_COMPILED") == "1"


def build_is_compiled() -> bool:
    """Whether this install runs compiled without FINTRACE_PURE (which this run may have set)."""
    present = _native.compiled_modules()
    return bool(present) and not _native.stale(_native.recorded(), present)


def without_pure() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FINTRACE_PURE"}


#: The JSON document (``--format json``) of each file given on its own line
#: of stdin, with idle connections frozen as usual and at every chance.
DUMP = r"""
import io, json, sys
import fintrace
from fintrace.errors import FintraceError
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.render.jsonout import JsonRenderer

out = {"compiled": fintrace.COMPILED, "files": {}}
for path in sys.stdin.read().splitlines():
    for freeze_after in (30.0, 0.0):
        text = io.StringIO()
        try:
            run = analyze(AnalyzeOptions(paths=(path,), freeze_after=freeze_after))
            renderer = JsonRenderer(text)
            renderer.begin(run)
            for conn in run.connections():
                renderer.connection(conn)
            renderer.end(run)
            got = json.loads(text.getvalue())
        except FintraceError as exc:
            got = {"error": str(exc)}
        out["files"][f"{path} {freeze_after}"] = got
json.dump(out, sys.stdout)
"""


def dump(paths: list[Path], *, pure: bool) -> dict[str, object]:
    env = without_pure()
    if pure:
        env["FINTRACE_PURE"] = "1"
    p = subprocess.run(
        [sys.executable, "-c", DUMP],
        input="\n".join(map(str, paths)),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    out: dict[str, object] = json.loads(p.stdout)
    return out


def test_the_build_under_test_is_what_it_says() -> None:
    import fintrace.tracker

    # COMPILED says where the core modules came from.
    assert fintrace.tracker.__file__ is not None
    assert fintrace.tracker.__file__.endswith(".py") is not fintrace.COMPILED
    if REQUIRE_COMPILED:
        assert build_is_compiled(), "CI builds the compiled core (FINTRACE_REQUIRE_COMPILED=1)"


def test_compiled_and_pure_give_the_same_output_on_every_capture() -> None:
    paths = capture_files() + corpus_files()
    assert len(paths) > 50
    pure = dump(paths, pure=True)
    this = dump(paths, pure=False)
    assert pure["compiled"] is False
    assert this["compiled"] is build_is_compiled()
    assert pure["files"] == this["files"]
    # Something was compared: connections, and damaged files' warnings.
    files = pure["files"]
    assert isinstance(files, dict)
    assert sum(len(f.get("connections", ())) for f in files.values()) > 1000
    assert any(c["warnings"] for f in files.values() for c in f.get("captures", ()))


def run_python(code: str, pythonpath: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=pythonpath,
        env={**without_pure(), "PYTHONPATH": str(pythonpath), **env},
        timeout=120,
        check=True,
    )


WHERE = (
    "import fintrace, fintrace.classify, fintrace.tracker;"
    "print(fintrace.COMPILED, fintrace.classify.__file__.endswith('.py'),"
    " fintrace.tracker.__file__.endswith('.py'))"
)


def test_fintrace_pure_runs_the_sources() -> None:
    p = run_python(WHERE, PACKAGE.parent, FINTRACE_PURE="1")
    assert p.stdout.split() == ["False", "True", "True"]
    assert p.stderr == ""


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """This install's fintrace package, compiled modules included, in a directory of its own."""
    shutil.copytree(PACKAGE, tmp_path / "fintrace", ignore=shutil.ignore_patterns("__pycache__"))
    for lib in PACKAGE.parent.glob("fintrace__mypyc.*"):
        shutil.copy2(lib, tmp_path)
    return tmp_path


def test_a_copy_of_this_build_runs_as_this_build(package_copy: Path) -> None:
    p = run_python(WHERE, package_copy)
    compiled = build_is_compiled()
    assert p.stdout.split() == [str(compiled), str(not compiled), str(not compiled)]
    assert p.stderr == ""


def fake_compiled(package: Path, module: str) -> None:
    """A compiled module on disk that no build recorded (what is in it never runs)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package / "fintrace" / (module + suffix)).write_bytes(b"not a library")


def test_a_changed_source_runs_the_sources_with_a_warning(package_copy: Path) -> None:
    if not build_is_compiled():
        fake_compiled(package_copy, "classify")
    with (package_copy / "fintrace" / "classify.py").open("a") as f:
        f.write("\n# edited after the build\n")
    code = (
        WHERE
        + ";"
        + (
            "from fintrace.pipeline import AnalyzeOptions, analyze;"
            f"print(len(list(analyze(AnalyzeOptions(paths=({str(CAPTURES / 'demo.pcap')!r},)))"
            ".connections())))"
        )
    )
    p = run_python(code, package_copy)
    where, conns = p.stdout.splitlines()
    assert where.split() == ["False", "True", "True"]
    assert int(conns) > 0
    assert "the compiled form of classify does not match its source" in p.stderr
    assert "running the pure-Python modules" in p.stderr


def test_a_compiled_module_no_build_recorded_is_not_run(package_copy: Path) -> None:
    fake_compiled(package_copy, "cli")  # never compiled
    p = run_python(WHERE + ";import fintrace.cli", package_copy)
    assert p.stdout.split() == ["False", "True", "True"]
    assert "compiled form of cli does not match its source" in p.stderr


def test_stale_lists_changed_and_unrecorded_modules() -> None:
    built = {"fintrace.classify": _native._source_hash("fintrace.classify")}
    assert built["fintrace.classify"]
    assert _native.stale(built, {"fintrace.classify"}) == []
    assert _native.stale(built, {"fintrace.classify", "fintrace.timeline"}) == ["fintrace.timeline"]
    assert _native.stale({"fintrace.classify": "0" * 64}, {"fintrace.classify"}) == [
        "fintrace.classify"
    ]


def source_tree(tmp_path: Path) -> Path:
    """The checkout's sources, without what a build left in it."""
    tree = tmp_path / "src"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", "*.so", "_build.py",
            "captures", "tests", "docs", "bench", "fuzz", ".*_cache", ".hypothesis",
        ),
    )  # fmt: skip
    return tree


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"FINTRACE_PURE": "1"}, "FINTRACE_PURE is set"),
        ({"CC": "/nonexistent/cc"}, "no C compiler"),
    ],
    ids=["asked", "no-compiler"],
)
def test_the_build_falls_back_to_pure_python(tmp_path: Path, env: dict[str, str], why: str) -> None:
    tree = source_tree(tmp_path)
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(tree)],
        capture_output=True,
        text=True,
        env={**without_pure(), **env},
        timeout=600,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"building pure Python only: {why}" in p.stdout + p.stderr
    (wheel,) = tmp_path.glob("fintrace-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fintrace/tracker.py" in names
    assert not [n for n in names if n.endswith(".so")]
    assert (
        "COMPILED: dict[str, str] = {}"
        in zipfile.ZipFile(wheel).read("fintrace/_build.py").decode()
    )


def _records(value: object) -> list[Record]:
    """Every record in ``value``, itself included, depth first."""
    from fintrace.model import Record

    found: list[Record] = []
    if isinstance(value, Record):
        found.append(value)
        value = value.values()
    if isinstance(value, tuple):
        for item in value:
            found += _records(item)
    return found


def test_every_record_is_made_and_given_back_by_its_fields() -> None:
    # Equality, the hash, the repr, pickling (--jobs) and replace() all read
    # a record through its FIELDS, which must name every field in the order
    # __init__ takes them: a record made again from its values is equal to it
    # only then (two fields swapped, or one left out, break it). The JSON
    # contract lists a connection's fields in the same order.
    import pickle

    from fintrace.model import Connection
    from fintrace.pipeline import AnalyzeOptions, analyze
    from fintrace.render.jsonout import connection_dict

    paths = [str(p) for p in capture_files() if "closes" in p.parts or "incident" in p.parts]
    kinds: set[str] = set()
    for path in paths:
        for conn in analyze(AnalyzeOptions(paths=(path,))).connections():
            assert list(connection_dict(conn)) == list(Connection.FIELDS)
            for rec in _records(conn):
                values = rec.values()
                assert len(values) == len(set(type(rec).FIELDS)), type(rec).__name__
                again = type(rec)(*values)
                assert again == rec and hash(again) == hash(rec) and again.values() == values
                assert pickle.loads(pickle.dumps(rec)) == rec
                assert rec.replace() == rec
                assert repr(rec).startswith(type(rec).__name__ + "(")
                kinds.add(type(rec).__name__)
    assert {"Connection", "Endpoint", "FileSpan", "SideCounts", "SideFrames", "SideStates",
            "Transition", "Reuse"} <= kinds  # fmt: skip


@pytest.mark.parametrize("pure", [False, True])
def test_version_says_the_form_and_the_interpreter_that_run(pure: bool) -> None:
    env = without_pure() | ({"FINTRACE_PURE": "1"} if pure else {})
    p = subprocess.run(
        [sys.executable, "-P", "-m", "fintrace", "--version"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    form = "compiled" if build_is_compiled() and not pure else "pure Python"
    python = f"{sys.implementation.name.replace('cpython', 'CPython')} " + ".".join(
        str(n) for n in sys.version_info[:3]
    )
    assert p.stdout == f"fintrace {fintrace.__version__} ({form}, {python})\n"
