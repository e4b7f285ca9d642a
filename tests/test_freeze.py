"""Idle open connections are frozen to bytes and thawed unchanged.

An open connection with no packet for :data:`~fintrace.flowtable.FREEZE_AFTER`
seconds of packet time is kept as one bytes object (a third of its size as
objects) until a segment or the end of the capture thaws it. Freezing must
change nothing: with every idle connection frozen at every chance, each
capture in ``captures/`` and the shared corpus gives the same output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fintrace import flowtable
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.render.jsonout import connection_dict
from fintrace.tracker import Tracker, freeze, thaw

from conftest import CAPTURES, capture_files, corpus_files


def output(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    r = analyze(AnalyzeOptions(paths=(str(path),)))
    conns = [connection_dict(c) for c in r.connections()]
    return conns, [c.as_dict() for c in r.captures]


def state(conn: Tracker) -> Any:
    """Every slot of the tracker and its halves, references made comparable."""

    def side(h: object) -> str | None:
        return None if h is None else ("a" if h is conn.a else "b")

    out: dict[str, Any] = {}
    for name in Tracker.__slots__:
        v = getattr(conn, name)
        if name in ("a", "b"):
            v = {s: getattr(v, s) for s in type(v).__slots__ if s not in ("conn", "peer")}
        elif name in ("first_fin", "rst_from"):
            v = side(v)
        elif name == "transitions":
            v = [(side(h), s, f, ts) for h, s, f, ts in v]
        out[name] = v
    return out


@pytest.mark.parametrize(
    "path", capture_files() + corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_freezing_every_idle_connection_changes_nothing(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = output(path)
    monkeypatch.setattr(flowtable, "FREEZE_AFTER", 0.0)
    got = output(path)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_idle_connections_of_the_incident_are_frozen_with_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # captures/incident holds connections stuck in CLOSE_WAIT for minutes:
    # with the default FREEZE_AFTER they are frozen, then thawed at the end.
    thawed: list[int] = []
    real_thaw = flowtable.thaw

    def counting_thaw(blob: bytes, key_a: bytes, key_b: bytes) -> Tracker:
        thawed.append(len(blob))
        return real_thaw(blob, key_a, key_b)

    monkeypatch.setattr(flowtable, "thaw", counting_thaw)
    conns, _ = output(CAPTURES / "incident" / "incident.pcap.gz")
    stuck = [c for c in conns if c["stuck"]]
    assert stuck and len(thawed) >= len(stuck)


def test_a_frozen_tracker_thaws_equal(analyze_trackers: list[Tracker]) -> None:
    from fintrace.model import State

    # The frozen form packs a transition's side and state in one number: side × 16 + state.
    assert len(State) <= 16
    assert analyze_trackers
    for conn in analyze_trackers:
        copy = thaw(freeze(conn), conn.a.key, conn.b.key)
        assert state(copy) == state(conn)
        assert copy.a.peer is copy.b and copy.b.conn is copy
        for h, _, _, _ in copy.transitions:
            assert h is copy.a or h is copy.b


def test_freezing_shrinks_a_tracker(analyze_trackers: list[Tracker]) -> None:
    import tracemalloc

    conns = analyze_trackers
    tracemalloc.start()
    try:
        copies = [thaw(freeze(c), c.a.key, c.b.key) for c in conns]
        objects = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        blobs = [freeze(c) for c in copies]
        frozen = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(blobs) == len(copies)
    assert frozen < objects / 2, (frozen, objects)


@pytest.fixture
def analyze_trackers() -> list[Tracker]:
    """Every tracker of the crafted close captures, straight from the flow table."""
    from collections import Counter

    from fintrace.decode import DecodeStats, segments
    from fintrace.reader import CaptureFile
    from fintrace.reassembly import Reassembler

    out: list[Tracker] = []
    for path in capture_files():
        if path.parent.name != "closes":
            continue
        skipped: Counter[str] = Counter()
        table = flowtable.FlowTable(linger=float("inf"))
        with CaptureFile(path) as cap:
            segs = segments(cap.records(), DecodeStats(skipped), Reassembler(skipped))
            out += list(table.consume(segs))
        out += table.finish()
    return out
