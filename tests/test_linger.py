"""A finished connection is reported after ``--linger`` and its 4-tuple remembered for 2×MSL.

After a close or reset, a connection waits ``--linger`` seconds of packet time
(default 30 s) for late segments, is reported and forgotten; a tombstone keeps
its stream number and base sequence numbers for 2×MSL, so numbering stays
Wireshark's, a late segment is counted (and said in a warning) instead of
starting a stream of its own, and a new SYN on the 4-tuple says which stream
it reuses. Stream and frame numbers are checked against tshark, the numbering
rule following the installed release.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fintrace.cli import main
from fintrace.flowtable import FlowTable, Tombstone
from fintrace.pipeline import DEFAULT_LINGER, AnalyzeOptions, analyze
from fintrace.tracker import RELEASED, Tracker, release

from conftest import need
from craft import Flow, write_pcap
from tshark_oracle import run_tshark, tshark_numbering


def graceful(f: Flow) -> None:
    f.c("S")
    f.s("SA")
    f.c("A")
    f.c("PA", b"x" * 10)
    f.s("PA", b"y" * 20)
    f.c("FA")
    f.s("A")
    f.s("FA")
    f.c("A")


def run(path: Path, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    r = CliRunner().invoke(main, ["analyze", "--format", "json", *args, str(path)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    return doc["connections"], doc["captures"][0], r.stderr


def spans(conns: list[dict[str, Any]]) -> list[tuple[int, int, int, int]]:
    return [(c["stream"], c["first_frame"], c["last_frame"], c["packets"]) for c in conns]


@pytest.fixture
def late_ack(tmp_path: Path) -> Path:
    """A graceful close (frames 1-9), then a stray ACK 40 s later (frame 10)."""
    f = Flow()
    graceful(f)
    f.c("A", dt=40.0)
    path = tmp_path / "late_ack.pcap"
    write_pcap(str(path), f.packets)
    return path


def test_a_segment_after_the_linger_is_late_and_said_so(late_ack: Path) -> None:
    conns, cap, _err = run(late_ack)
    # Reported after 30 s without the stray ACK; no stream of its own.
    assert spans(conns) == [(0, 1, 9, 9)]
    assert conns[0]["close_type"] == "graceful"
    warning = "1 segment(s) came more than 30 s after their connection ended"
    assert any(w.startswith(warning) for w in cap["warnings"]), cap["warnings"]
    # Waiting longer keeps it in the connection, as Wireshark does.
    conns, cap, _ = run(late_ack, "--linger", "50")
    assert spans(conns) == [(0, 1, 10, 10)]
    assert not cap["warnings"]


def test_the_late_segment_keeps_wiresharks_stream(late_ack: Path) -> None:
    need("tshark")
    t = run_tshark(late_ack)
    # tshark puts frame 10 in stream 0 too: fintrace made no stream 1 of it.
    assert set(t.streams) == {0}
    assert t.streams[0].last_frame == 10


def syn_after(gap: float, isn: int, tmp_path: Path) -> Path:
    """A graceful close, then ``gap`` s later a new SYN on the same 4-tuple."""
    f = Flow()
    graceful(f)
    g = Flow(client_isn=isn, t=f.t + gap)
    graceful(g)
    path = tmp_path / f"syn_after_{gap:g}_{isn}.pcap"
    write_pcap(str(path), f.packets + g.packets)
    return path


@pytest.mark.parametrize("gap", [5.0, 45.0])
def test_a_syn_on_a_remembered_tuple_reuses_it(gap: float, tmp_path: Path) -> None:
    # 5 s: the first connection still lingers; 45 s: only its tombstone is left
    # (30 s linger < 45 s < 2×MSL = 60 s). Both say which stream is reused.
    path = syn_after(gap, 90_000, tmp_path)
    conns, cap, _ = run(path)
    assert spans(conns) == [(0, 1, 9, 9), (1, 10, 18, 9)]
    assert [c["close_type"] for c in conns] == ["graceful", "graceful"]
    assert conns[0]["reused_tuple"] is None
    reuse = conns[1]["reused_tuple"]
    assert reuse["previous_stream"] == 0
    assert reuse["gap_s"] == pytest.approx(gap + 0.001, abs=1e-6)
    assert not cap["warnings"]
    need("tshark")
    t = run_tshark(path)
    assert [
        (s, v.first_frame, v.last_frame, v.packets) for s, v in sorted(t.streams.items())
    ] == spans(conns)


def test_after_2msl_the_tuple_is_forgotten(tmp_path: Path) -> None:
    # 90 s > 2×MSL (60 s): a new stream, and no reuse reported (documented:
    # reuse is what happens within the TIME_WAIT span).
    path = syn_after(90.0, 90_000, tmp_path)
    conns, _, _ = run(path)
    assert spans(conns) == [(0, 1, 9, 9), (1, 10, 18, 9)]
    assert conns[1]["reused_tuple"] is None
    conns, _, _ = run(path, "--msl", "60")
    assert conns[1]["reused_tuple"]["previous_stream"] == 0


def test_a_syn_with_the_same_isn_follows_the_numbering_rule(tmp_path: Path) -> None:
    # The same client ISN after the close: Wireshark 4.0 keeps the SYN in the
    # old stream (its base sequence number), 4.4 and the contract start a new
    # one after a FIN. Here the tombstone decides, 45 s after the close.
    path = syn_after(45.0, 1_000, tmp_path)
    for numbering, want in (
        ("wireshark-4.4", [(0, 1, 9, 9), (1, 10, 18, 9)]),
        ("wireshark-4.0", [(0, 1, 9, 9)]),
    ):
        conns, cap, _ = run(path, "--numbering", numbering)
        assert spans(conns) == want, numbering
        late = [w for w in cap["warnings"] if "after their connection ended" in w]
        assert bool(late) == (numbering == "wireshark-4.0")
    need("tshark")
    conns, _, _ = run(path, "--numbering", tshark_numbering())
    t = run_tshark(path)
    # Under 4.0 tshark lists frames 10-18 in stream 0; fintrace reported the
    # stream before they came (counted late), so only the first frames agree.
    assert sorted(t.streams) == [c["stream"] for c in conns]
    assert t.streams[0].first_frame == 1


def test_tombstones_hold_no_tracker() -> None:
    # 2,000 closed connections, then a packet 40 s later: all reported,
    # each 4-tuple remembered by a tombstone, no Tracker left alive.
    f0 = Flow(client=("10.0.0.1", 1))
    segments = []
    from fintrace.decode import ACK, FIN, SYN

    n = 2_000
    t0 = f0.t
    for i in range(n):
        ck = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + (10_000 + i).to_bytes(2, "big") + b"\x00\x50"
        sk = ck[4:8] + ck[:4] + ck[10:12] + ck[8:10]
        t = t0 + i * 0.001
        segments += [
            (0, t, ck, 100, 0, SYN, 0, 1000, -1),
            (0, t, sk, 500, 101, SYN | ACK, 0, 1000, -1),
            (0, t, ck, 101, 501, ACK | FIN, 0, 1000, -1),
            (0, t, sk, 501, 102, ACK | FIN, 0, 1000, -1),
            (0, t, ck, 102, 502, ACK, 0, 1000, -1),
        ]
    other = bytes([10, 0, 0, 9, 10, 0, 0, 8, 0, 1, 0, 2])
    segments.append((0, t0 + 40.0, other, 1, 0, SYN, 0, 1000, -1))
    segments = [(k + 1, *s[1:]) for k, s in enumerate(segments)]
    table = FlowTable(linger=DEFAULT_LINGER, remember=60.0)
    done = list(table.consume(segments))
    assert len(done) == n
    for conn in done:
        release(conn)  # as the pipeline does
    del done, conn
    gc.collect()
    # Each filed once, under the lower of its two flow keys.
    assert sum(isinstance(v, Tombstone) for v in table.tombstones.values()) == n
    assert all(k == min(v.key_a, v.key_b) for k, v in table.tombstones.items())
    assert len(table.table) == 2  # only the SYN at +40 s is live
    live = [o for o in gc.get_objects() if isinstance(o, Tracker) and o is not RELEASED]
    assert len(live) == 1  # the SYN at +40 s


def test_default_linger_is_at_most_2msl() -> None:
    assert AnalyzeOptions(paths=("x",)).linger_s == DEFAULT_LINGER == 30.0
    assert AnalyzeOptions(paths=("x",), msl=10.0).linger_s == 20.0
    assert AnalyzeOptions(paths=("x",), linger=float("inf")).linger_s == float("inf")
    assert AnalyzeOptions(paths=("x",)).remember_s == 60.0


def test_core_run_counts_late_segments_per_file(late_ack: Path) -> None:
    r = analyze(AnalyzeOptions(paths=(str(late_ack), str(late_ack)), separate=True))
    assert len(list(r.connections())) == 2
    assert all(any("1 segment(s)" in w for w in c.warnings) for c in r.captures)


@pytest.mark.parametrize("freeze_after", [30.0, 0.0])
def test_a_connection_to_itself_is_reported_once_at_the_end(
    tmp_path: Path, freeze_after: float
) -> None:
    # Both directions of a connection from an address and port to themselves (a
    # TCP self-connect) have one flow key: the table files only one side of it,
    # and the end of the capture must still find it, frozen or not.
    selfie = Flow(client=("10.0.0.7", 40007), server=("10.0.0.7", 40007))
    selfie.c("S")
    selfie.c("S", dt=0.5)
    other = Flow()
    other.c("S", dt=0.2)
    other.s("SA")
    other.c("A")
    path = tmp_path / "self.pcap"
    write_pcap(str(path), sorted(selfie.packets + other.packets, key=lambda p: float(p.time)))
    run_ = analyze(AnalyzeOptions(paths=(str(path),), freeze_after=freeze_after))
    conns = sorted(run_.connections(), key=lambda c: c.stream)
    assert [(c.client.ip, c.server.ip, c.packets) for c in conns] == [
        ("10.0.0.7", "10.0.0.7", 2),
        ("10.0.0.1", "10.0.0.2", 3),
    ]


def test_a_released_tracker_is_freed_without_the_collector() -> None:
    # The pipeline pauses the cycle collector: release() must leave nothing
    # that only the collector would free (side -> tracker, side -> peer).
    def trackers() -> int:
        return sum(isinstance(o, Tracker) for o in gc.get_objects())

    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        before = trackers()
        conn = Tracker(0, 0, b"k" * 12, b"r" * 12, 1, 1.0)
        assert trackers() == before + 1
        release(conn)
        assert conn.a.conn is RELEASED and conn.b.peer is RELEASED.a
        del conn
        assert trackers() == before
    finally:
        if enabled:
            gc.enable()
