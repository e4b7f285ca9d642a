"""fintrace numbers connections exactly as tshark 4.0 numbers ``tcp.stream``.

Every capture under ``captures/`` (any depth, every helper's, future ones
too) and every capture of the shared corpus is read by tshark with its
default preferences and by fintrace; per connection, ``stream``,
``first_frame``, ``last_frame`` and ``packets`` must be equal, and so must
the number of frames. Multi-file runs are checked file by file: each
connection's ``files[]`` spans against tshark run on that file alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fintrace.cli import main
from fintrace.errors import FintraceError
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.render.jsonout import connection_dict

from conftest import CAPTURES, CORPUS, ROOT, capture_files, corpus_files, need
from tshark_oracle import TsharkResult, run_tshark, tshark_numbering

pytestmark = pytest.mark.tshark

Oracle = Callable[[Path], TsharkResult]
Frames = dict[int, tuple[int, int, int]]

#: Captures tshark cannot open at all, and why. fintrace must refuse each in
#: one line with exit status 2, or read it.
UNREADABLE: dict[str, str] = {
    "captures/regressions/pcapng_idb_option_past_end.pcapng": (
        "a fuzzing regression: an interface description option runs past its block; tshark "
        "refuses the whole file (pcapng: Not enough data to handle option of length 8)"
    ),
}

#: Captures whose TCP tshark finds inside a tunnel fintrace does not decode,
#: and which tunnel: their stream numbers cannot agree. fintrace must count
#: those packets as ``tunnelled``. None today (the corpus's PPTP capture
#: carries no TCP inside its enhanced GRE).
TUNNELLED: dict[str, str] = {}


def label(path: Path) -> str:
    if path.is_relative_to(CAPTURES):
        return path.relative_to(ROOT).as_posix()
    return "corpus/" + path.name


FILES = [*capture_files(), *corpus_files()]


@pytest.fixture(scope="session")
def oracle(request: pytest.FixtureRequest) -> Oracle:
    """tshark's view of a file; every file is read once, in parallel, and cached."""
    need("tshark")
    cache = getattr(request.config, "cache", None)
    workers = max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = dict(zip(FILES, pool.map(lambda p: run_tshark(p, cache), FILES), strict=True))

    def get(path: Path) -> TsharkResult:
        return done[path] if path in done else run_tshark(path, cache)

    return get


def fintrace_run(*paths: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    r = analyze(AnalyzeOptions(paths=tuple(str(p) for p in paths), numbering=tshark_numbering()))
    conns = [connection_dict(c) for c in r.connections()]
    return conns, [c.as_dict() for c in r.captures]


def tshark_frames(t: TsharkResult) -> Frames:
    return {s: (v.first_frame, v.last_frame, v.packets) for s, v in t.streams.items()}


def differences(got: Frames, want: Frames) -> list[str]:
    """One line per stream where fintrace and tshark disagree (readable failures)."""
    out = []
    for s in sorted(set(got) | set(want)):
        if got.get(s) != want.get(s):
            out.append(
                f"stream {s}: fintrace {got.get(s)} tshark {want.get(s)}"
                " (first frame, last frame, packets)"
            )
    return out


@pytest.mark.parametrize("path", FILES, ids=[label(p) for p in FILES])
def test_streams_and_frames_match_tshark(path: Path, oracle: Oracle) -> None:
    name = label(path)
    t = oracle(path)
    if not t.opened:
        assert name in UNREADABLE, f"tshark cannot read {name} ({t.error}): list it, and why"
        result = CliRunner().invoke(main, ["analyze", "--format", "jsonl", "-q", str(path)])
        if result.exit_code == 2:
            assert len(result.output.strip().splitlines()) == 1, result.output
        else:
            assert result.exit_code == 0, result.output
        return
    assert name not in UNREADABLE, f"tshark reads {name} now: take it off UNREADABLE"
    try:
        conns, (info,) = fintrace_run(path)
    except FintraceError as exc:
        pytest.fail(f"tshark reads {name} ({t.frames} frames) but fintrace refuses it: {exc}")
    if name in TUNNELLED:
        assert info["skipped"].get("tunnelled", 0) > 0, (name, TUNNELLED[name])
        return
    got = {c["stream"]: (c["first_frame"], c["last_frame"], c["packets"]) for c in conns}
    assert len(got) == len(conns), f"{name}: a stream number used twice"
    assert not differences(got, tshark_frames(t)), "\n".join(differences(got, tshark_frames(t)))
    assert info["packets"] == t.frames, f"{name}: fintrace counts {info['packets']} frames"
    if t.error:
        # tshark stopped at damage; fintrace must say it did too.
        assert info["truncated"] or info["warnings"], f"{name}: tshark says {t.error}"


def spans_by_file(conns: list[dict[str, Any]]) -> dict[str, Frames]:
    per_file: dict[str, Frames] = {}
    for c in conns:
        for s in c["files"]:
            frames = per_file.setdefault(s["capture"], {})
            assert s["stream"] not in frames, f"{s['capture']}: stream {s['stream']} twice"
            frames[s["stream"]] = (s["first_frame"], s["last_frame"], s["packets"])
    return per_file


def check_group(paths: list[Path], oracle: Oracle) -> None:
    """One run over ``paths``: each file's spans are tshark's numbering of that file."""
    conns, infos = fintrace_run(*paths)
    per_file = spans_by_file(conns)
    assert {i["file"] for i in infos} == {str(p) for p in paths}
    problems = []
    for info in infos:
        t = oracle(Path(info["file"]))
        got = per_file.get(info["file"], {})
        problems += [
            f"{label(Path(info['file']))}: {d}" for d in differences(got, tshark_frames(t))
        ]
        if info["packets"] != t.frames:
            problems.append(f"{info['file']}: {info['packets']} frames, tshark {t.frames}")
    assert not problems, "\n".join(problems)


def test_ring_buffer_spans_match_tshark_file_by_file(oracle: Oracle) -> None:
    check_group(sorted((CAPTURES / "formats" / "ring").glob("*.pcap")), oracle)


def test_whole_corpus_as_one_run_matches_tshark_file_by_file(corpus: Path, oracle: Oracle) -> None:
    # Unrelated captures share 4-tuples: connections carried from one file
    # to the next must still be numbered as each file alone numbers them.
    paths = [p for p in corpus_files() if oracle(p).opened]
    assert len(paths) > 1
    check_group(paths, oracle)


def test_exclusions_name_existing_captures() -> None:
    known = {label(p) for p in FILES}
    assert set(UNREADABLE) <= known
    assert set(TUNNELLED) <= known
    assert CORPUS.name == "corpus"
