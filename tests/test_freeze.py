"""Idle open connections are frozen to bytes and thawed unchanged.

An open connection with no packet for ``freeze_after`` (by default
:data:`~fintrace.flowtable.FREEZE_AFTER`) seconds of packet time is kept as
one bytes object (a third of its size as objects) until a segment or the end
of the capture thaws it. Freezing must
change nothing: with every idle connection frozen at every chance, each
capture in ``captures/`` and the shared corpus gives the same output.
"""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from fintrace.decode import ACK, SYN, Segment
from fintrace.flowtable import FREEZE_AFTER, FlowTable
from fintrace.model import Anomaly, Role, State, Transition
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.render.jsonout import connection_dict
from fintrace.tracker import HALF_FIELDS, TABLE_FIELDS, TRACKER_FIELDS, Tracker, freeze, thaw

from conftest import CAPTURES, capture_files, corpus_files


def output(
    path: Path, freeze_after: float = FREEZE_AFTER
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    r = analyze(AnalyzeOptions(paths=(str(path),), freeze_after=freeze_after))
    conns = [connection_dict(c) for c in r.connections()]
    return conns, [c.as_dict() for c in r.captures]


def state(conn: Tracker) -> Any:
    """Every slot of the tracker and its halves, references made comparable."""

    def side(h: object) -> str | None:
        return None if h is None else ("a" if h is conn.a else "b")

    out: dict[str, Any] = {}
    for name in TRACKER_FIELDS:
        if name in TABLE_FIELDS:
            continue  # the flow table's, not the connection's: not frozen
        v = getattr(conn, name)
        if name in ("a", "b"):
            v = {s: getattr(v, s) for s in HALF_FIELDS if s not in ("conn", "peer")}
        elif name in ("first_fin", "rst_from"):
            v = side(v)
        elif name == "transitions":
            v = [(side(conn.half_of(m)), m.state, m.frame, m.ts) for m in v]
        out[name] = v
    return out


@pytest.mark.parametrize(
    "path", capture_files() + corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_freezing_every_idle_connection_changes_nothing(path: Path) -> None:
    want = output(path)
    got = output(path, freeze_after=0.0)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_freezing_changes_nothing_across_files() -> None:
    # A rotated ring buffer read as one capture: connections carried from
    # file to file, frozen in one and thawed in the next.
    ring = CAPTURES / "formats" / "ring"
    paths = tuple(str(ring / f"ring_{i}.pcap") for i in (1, 2, 0))

    def run(freeze_after: float) -> tuple[list[dict[str, Any]], FlowTable]:
        r = analyze(AnalyzeOptions(paths=paths, freeze_after=freeze_after))
        conns = [connection_dict(c) for c in r.connections()]
        (table,) = r.tables
        return conns, table

    want, _ = run(FREEZE_AFTER)
    got, table = run(0.0)
    assert table.freezes  # the test froze something
    assert table.thaws == table.freezes  # and every frozen connection came back
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_idle_connections_of_the_incident_are_frozen_with_the_default() -> None:
    # captures/incident holds connections stuck in CLOSE_WAIT for minutes:
    # with the default FREEZE_AFTER they are frozen, then thawed at the end.
    r = analyze(AnalyzeOptions(paths=(str(CAPTURES / "incident" / "incident.pcap.gz"),)))
    stuck = [c for c in r.connections() if c.stuck]
    (table,) = r.tables
    assert stuck and table.thaws >= len(stuck)
    assert table.thaws == table.freezes


def test_every_idle_connection_is_frozen_a_self_connect_too() -> None:
    # _freeze_idle finds each connection by its side b, the one filed last: every
    # open connection idle long enough must go, one from an address and port to
    # themselves (one key, side b's) as well, and no other.
    table = FlowTable()
    me = _ipv4_key(0x0A000007, 0x0A000007, 40007, 40007)
    segs: list[Segment] = [(1, 0.0, me, 100, 0, SYN, 0, 64240, 7)]
    for i in range(50):
        key = _ipv4_key(0x0A000001 + i, 0x0A000063, 40000 + i, 80)
        segs.append((2 + i, 0.01 * i, key, 1000, 0, SYN, 0, 64240, 7))
    # One that keeps sending: not idle when the others are frozen.
    busy = _ipv4_key(0x0A0000AA, 0x0A000063, 50000, 80)
    segs += [(60, 0.5, busy, 7, 0, SYN, 0, 64240, 7), (61, 29.9, busy, 7, 0, SYN, 0, 64240, 7)]
    segs.append((62, 40.0, _ipv4_key(0x0A0000BB, 0x0A000063, 50001, 80), 9, 0, SYN, 0, 64240, 7))
    assert not list(table.consume(segs))
    assert table.freezes == 51 and len(table.frozen) == 51
    assert me in table.frozen
    left = {c.a.key for c in table._filed()}
    assert left == {busy, _ipv4_key(0x0A0000BB, 0x0A000063, 50001, 80)}


def test_a_frozen_tracker_thaws_equal(analyze_trackers: list[Tracker]) -> None:
    # The frozen form packs a transition's side and state in one number: side × 16 + state.
    assert len(State) <= 16
    assert analyze_trackers
    for conn in analyze_trackers:
        copy = thaw(freeze(conn), conn.a.key, conn.b.key)
        assert state(copy) == state(conn)
        # Types too (0 is not 0.0 nor False in the output): values left out
        # of the frozen form come back as they were.
        assert repr(state(copy)) == repr(state(conn))
        assert copy.a.peer is copy.b and copy.b.conn is copy
        for m, was in zip(copy.transitions, conn.transitions, strict=True):
            assert m.side is was.side


def test_every_slot_survives_freezing() -> None:
    # A value of its own in every slot, none what a new tracker holds: a slot
    # that freeze() leaves out comes back as it started, and fails this.
    conn = Tracker(7, 1, b"k" * 12, b"K" * 12, 100, 1.5)
    n = 1000

    def own(name: str, old: object) -> object:
        nonlocal n
        n += 1
        if type(old) is bool:
            return not old
        if type(old) is int:
            return n
        if type(old) is float:
            return n + 0.25
        raise AssertionError(f"no test value for the slot {name!r}: add one")

    for h, st in ((conn.a, State.FIN_WAIT_2), (conn.b, State.CLOSE_WAIT)):
        for name in HALF_FIELDS:
            if name not in ("conn", "peer", "key"):
                setattr(h, name, st if name == "state" else own(name, getattr(h, name)))
    special = {
        "first_fin": conn.b,
        "rst_from": conn.a,
        "reuse": (3, 2.5),
        "anomalies": {Anomaly.ONE_SIDED: 2},
        "rst_phase": "closed",
        "file_spans": [[1, 7, 100, 180, 0], [2, 0, 1, 9, 40]],
        "transitions": [
            Transition(Role.CLIENT, State.FIN_WAIT_1, 150, 2.5),
            Transition(Role.SERVER, State.CLOSE_WAIT, 151, 2.75),
        ],
    }
    for name in TRACKER_FIELDS:
        if name in special:
            setattr(conn, name, special[name])
        elif name not in ("a", "b", "trace"):  # traced connections are never frozen
            setattr(conn, name, own(name, getattr(conn, name)))
    copy = thaw(freeze(conn), conn.a.key, conn.b.key)
    assert repr(state(copy)) == repr(state(conn))
    # The table's own slots start anew: a thawed tracker is filed again by the table.
    fresh = Tracker(0, 0, conn.a.key, conn.b.key, 0, 0.0)
    assert [getattr(copy, n) for n in TABLE_FIELDS] == [getattr(fresh, n) for n in TABLE_FIELDS]
    assert [getattr(conn, n) for n in TABLE_FIELDS] != [getattr(fresh, n) for n in TABLE_FIELDS]
    # Sequence numbers are written after their side's first, frames after the
    # connection's first: a side without one, a number that wrapped around,
    # frames below the first (a later file of a ring buffer restarts them).
    conn.a.ws_base = -1
    conn.b.ws_base = (1 << 32) - 10
    conn.b.nxt = 5
    conn.b.isn = (1 << 32) - 10
    conn.a.acked = 3  # after b's base, wrapped
    conn.first_frame = 5_000
    conn.b.fin_frame = 4_999
    copy = thaw(freeze(conn), conn.a.key, conn.b.key)
    assert repr(state(copy)) == repr(state(conn))


def _half_slots(conn: Tracker, *types: type) -> list[tuple[object, str]]:
    """The slots of both sides holding a value of one of ``types`` (a side's
    base sequence number aside: the others are written after it)."""
    return [
        (h, n)
        for h in (conn.a, conn.b)
        for n in HALF_FIELDS
        if n not in ("key", "ws_base") and type(getattr(h, n)) in types
    ]


def test_runs_of_default_slots_survive_freezing() -> None:
    # Defaults in a row are written as one byte for up to 17 of them: runs of
    # every length, cut short at every place, come back as they were.
    for step in range(1, 40):
        conn = Tracker(3, 0, b"k" * 12, b"K" * 12, 10, 1.0)
        for i, (half, name) in enumerate(_half_slots(conn, int, float)):
            if i % step == step - 1:
                old = getattr(half, name)
                setattr(half, name, 20 + i if type(old) is int else 20.5 + i)
        copy = thaw(freeze(conn), conn.a.key, conn.b.key)
        assert repr(state(copy)) == repr(state(conn)), step
    # A tracker that saw nothing: its default slots take a byte per run of 17.
    fresh = Tracker(0, 0, b"k" * 12, b"K" * 12, 0, 0.0)
    assert len(freeze(fresh)) < len(_half_slots(fresh, int, float)) // 2


def _float_slots(conn: Tracker) -> list[tuple[object, str]]:
    return [(conn, "first_ts"), (conn, "last_ts"), (conn, "rst_ts"), *_half_slots(conn, float)]


def test_every_kind_of_float_survives_freezing() -> None:
    # Floats of every kind, in every slot that holds one and in a value of
    # any type (the reuse gap): timestamps of microseconds and nanoseconds,
    # durations, negative, huge, infinite, not a number, repeated.
    kinds = [
        1_700_000_000.123456,
        1_700_000_000.123456789,
        1_699_999_999.5,
        0.1,
        1e-7,
        4_294_967_296.5,
        -2.25,
        float("inf"),
        float("nan"),
        1_700_000_003.000001,
        1_700_000_000.123456,
    ]
    for shift in range(len(kinds)):
        conn = Tracker(3, 0, b"k" * 12, b"K" * 12, 10, 1.0)
        values = kinds[shift:] + kinds[:shift]
        for (obj, name), v in zip(_float_slots(conn), values, strict=False):
            setattr(obj, name, v)
        conn.reuse = (2, values[-1])
        copy = thaw(freeze(conn), conn.a.key, conn.b.key)
        assert repr(state(copy)) == repr(state(conn)), shift


def test_64_bit_patterns_survive_their_varint() -> None:
    # The floats after the first are stored as their bits XOR the first's: any
    # 64-bit pattern, the top bit (a sign) and a tenth byte included.
    from fintrace.tracker import _Freezing, _Thawing

    values = [0, 1, 0x7F, 0x80, 2**56, 2**62, 2**63 - 1, -1, -(2**63), -2, 0x0123456789ABCDEF]
    w = _Freezing()
    w.varint(0)  # no floats: what _Thawing reads first
    for v in values:
        w.pattern(v)
    blob = w.out.getvalue()
    assert len(blob) == 1 + 1 + 1 + 1 + 2 + 9 + 9 + 9 + 10 + 10 + 10 + 9
    r = _Thawing(blob, 0)
    assert [r.pattern() for _ in values] == values
    assert r.pos == len(blob)


def test_the_times_of_a_connection_cost_about_half_their_size() -> None:
    # After the first, each distinct time is stored as its bits XOR the first's:
    # times seconds apart share sign, exponent and leading digits, so a new one
    # costs its index tag and a 4-byte varint (9 bytes when each was 8 bytes).
    def frozen_size(distinct: int) -> int:
        conn = Tracker(3, 0, b"k" * 12, b"K" * 12, 10, 1_700_000_000.000001)
        slots = _float_slots(conn)[1:]
        for i, (obj, name) in enumerate(slots):
            setattr(obj, name, 1_700_000_000.000001 + 0.123457 * min(i, distinct))
        blob = freeze(conn)
        copy = thaw(blob, conn.a.key, conn.b.key)
        assert repr(state(copy)) == repr(state(conn))
        return len(blob)

    sizes = [frozen_size(k) for k in range(1, 9)]
    growth = [b - a for a, b in itertools.pairwise(sizes)]
    assert all(0 < g <= 5 for g in growth), growth


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


def _ipv4_key(src: int, dst: int, sport: int, dport: int) -> bytes:
    return struct.pack(">IIHH", src, dst, sport, dport)


@pytest.mark.parametrize(
    "client_lower", [True, False], ids=["client-key-lower", "server-key-lower"]
)
@pytest.mark.parametrize("thawed_by", ["client", "server"])
def test_a_frozen_connection_is_filed_once_and_thawed_from_either_side(
    client_lower: bool, thawed_by: str
) -> None:
    low, high = 0x0A000001, 0x0A000002
    c_ip, s_ip = (low, high) if client_lower else (high, low)
    client = _ipv4_key(c_ip, s_ip, 40000, 80)
    server = _ipv4_key(s_ip, c_ip, 80, 40000)
    assert (client < server) is client_lower
    table = FlowTable()
    segs: list[Segment] = [
        (1, 0.0, client, 1000, 0, SYN, 0, 64240, 7),
        (2, 0.001, server, 5000, 1001, SYN | ACK, 0, 65160, 7),
        (3, 0.002, client, 1001, 5001, ACK, 0, 502, -1),
        # Another connection 40 s later: the first has been idle past FREEZE_AFTER.
        (4, 40.0, _ipv4_key(0x0A000009, s_ip, 40001, 80), 7, 0, SYN, 0, 64240, 7),
    ]
    assert not list(table.consume(segs))
    assert table.frozen.keys() == {min(client, server)}
    assert client not in table.table and server not in table.table
    late = (5, 41.0, client, 1001, 5001, ACK, 10, 502, -1)
    if thawed_by == "server":
        late = (5, 41.0, server, 5001, 1011, ACK, 10, 510, -1)
    assert not list(table.consume([late]))
    assert not table.frozen
    conns = table.finish()
    assert [c.stream for c in conns] == [0, 1]
    conn = conns[0]
    assert (conn.a.key, conn.b.key) == (client, server)
    assert conn.packets == 4 and conn.last_frame == 5
    sender = conn.a if thawed_by == "client" else conn.b
    # SYN and ACK, or SYN+ACK, before; the late data segment after.
    assert sender.bytes == 10 and sender.packets == (3 if thawed_by == "client" else 2)


def test_frozen_and_live_connections_end_in_stream_order() -> None:
    server = 0x0A000063
    table = FlowTable()
    segs: list[Segment] = []
    # 600 streams (numbers of one, two and three bytes): the even ones go idle
    # (frozen at 40 s), the odd ones keep sending.
    keys = [_ipv4_key(0x0A000001 + i, server, 40000, 80) for i in range(600)]
    segs += [(i + 1, 0.0, key, 9, 0, SYN, 0, 1, 7) for i, key in enumerate(keys)]
    segs += [
        (1000 + i, 40.0 + i / 1000, key, 9, 0, SYN, 0, 1, 7) for i, key in enumerate(keys) if i % 2
    ]
    list(table.consume(segs))
    assert len(table.frozen) == 300
    assert [c.stream for c in table.finish()] == list(range(600))
    assert not table.frozen and not table.table


def test_frozen_connections_of_several_files_end_in_file_then_stream_order() -> None:
    server = 0x0A000063
    table = FlowTable()
    keys = [_ipv4_key(0x0A000001 + i, server, 40000, 80) for i in range(9)]
    # File 0: streams 0-3; file 1 numbers again from 0: streams 0-3, then 4
    # for file 0's stream 2 carried over, then 5.
    list(table.consume([(i + 1, 0.0, keys[i], 9, 0, SYN, 0, 1, 7) for i in range(4)]))
    table.begin_file(1)
    segs: list[Segment] = [(i + 1, 1.0, keys[4 + i], 9, 0, SYN, 0, 1, 7) for i in range(4)]
    # Stream 2 of file 0 sends again in file 1 (a span there), then all but
    # file 1's stream 4 go idle and are frozen at 45 s.
    segs.append((5, 2.0, keys[2], 9, 0, SYN, 0, 1, 7))
    segs.append((6, 45.0, keys[8], 9, 0, SYN, 0, 1, 7))
    list(table.consume(segs))
    assert len(table.frozen) == 8
    done = table.finish()
    # In the order of the file each began in, then of their stream there.
    began = [(c.capture, c.stream) for c in done]
    assert began == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (1, 5)]
    assert [s[:2] for s in done[2].spans()] == [(0, 2), (1, 4)]


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
        table = FlowTable(linger=float("inf"))
        with CaptureFile(path) as cap:
            segs = segments(cap.records(), DecodeStats(skipped), Reassembler(skipped))
            out += list(table.consume(segs))
        out += table.finish()
    return out
