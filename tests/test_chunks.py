"""Where the reader's chunks end changes nothing.

:meth:`~fintrace.reader.CaptureFile.pump` reads a file in chunks of
:data:`~fintrace.reader.CHUNK` bytes and carries a record cut by the end of a
chunk over to the next. Read in chunks of a few dozen bytes, so that nearly
every record and block is cut somewhere, every capture in ``captures/`` and
the shared corpus gives the same records (time, bytes, lengths, link type),
the same warnings and the same analysis as read in the default chunks. And a
pcapng copy of a pcap gives its packets the same times, to the last bit.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fintrace import reader
from fintrace.errors import FintraceError
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.render.jsonout import connection_dict

from conftest import capture_files, corpus_files, need


def read(path: Path) -> Any:
    try:
        with reader.CaptureFile(path) as cap:
            records = [
                (ts, buf[off : off + caplen], caplen, origlen, lt)
                for ts, buf, off, caplen, origlen, lt in cap.records()
            ]
            return records, cap.warnings, cap.truncated, cap.linktypes
    except FintraceError as exc:
        return str(exc)


def analysed(path: Path) -> str:
    try:
        run = analyze(AnalyzeOptions(paths=(str(path),)))
        conns = [connection_dict(c) for c in run.connections()]
    except FintraceError as exc:
        return str(exc)
    return json.dumps([conns, [c.as_dict() for c in run.captures]], sort_keys=True)


@pytest.mark.parametrize(
    "path", capture_files() + corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_small_chunks_read_the_same(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = read(path)
    want_analysis = analysed(path)
    # 64: the smallest that holds a file's header (pcapng's first block is 28 bytes);
    # 97 and 1000: odd sizes, so that the cuts fall at other places.
    for chunk in (64, 97, 1000):
        monkeypatch.setattr(reader, "CHUNK", chunk)
        assert read(path) == want, chunk
        assert analysed(path) == want_analysis, chunk


def test_the_test_cuts_records(monkeypatch: pytest.MonkeyPatch) -> None:
    # The patched size is the one the reader uses: more pumps than records
    # would fit in one chunk of the default size.
    path = capture_files()[0]
    pumps = 0
    with reader.CaptureFile(path) as cap:
        while cap.pump(reader.RecordSink()):
            pumps += 1
    assert pumps == 0 or path.stat().st_size < reader.CHUNK
    monkeypatch.setattr(reader, "CHUNK", 64)
    pumps = 0
    with reader.CaptureFile(path) as cap:
        while cap.pump(reader.RecordSink()):
            pumps += 1
    assert pumps > path.stat().st_size // 64 - 2


@pytest.mark.parametrize(
    "path",
    [p for p in capture_files() if p.suffix == ".pcap"],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_a_pcapng_copy_has_the_same_times(path: Path, tmp_path: Path) -> None:
    # pcapng counts ticks (here microseconds) where pcap has seconds and a
    # fraction; ticks × 1e-6 rounds differently from seconds + fraction × 1e-6,
    # so the same packet must not get another float from a pcapng copy.
    need("editcap")
    copy = tmp_path / "copy.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(path), str(copy)], check=True)
    with reader.CaptureFile(path) as a, reader.CaptureFile(copy) as b:
        want = [r[0] for r in a.records()]
        got = [r[0] for r in b.records()]
    assert got == want
    assert want  # the capture has packets
