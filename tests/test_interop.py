"""Interop fields: Community ID against the spec's vectors, Zeek's conn_state per state."""

from __future__ import annotations

import ipaddress
import sys
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from fintrace.interop import LIKELY_SERVER_PORTS, community_id
from fintrace.pipeline import AnalyzeOptions, analyze

from conftest import CAPTURES

sys.path.insert(0, str(CAPTURES / "zeek"))

from make_zeek import CAPTURES as ZEEK_CAPTURES

if TYPE_CHECKING:
    from pathlib import Path

    from fintrace.tracker import Tracker


def _raw(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


# corelight/community-id-spec, baseline/README.md ("Default settings",
# "A custom seed=1 value", "No base64-encoding") and baseline_deflt.json:
# (proto, saddr, daddr, sport, dport, seed, base64, Community ID).
SPEC_VECTORS = [
    (6, "1.2.3.4", "5.6.7.8", 1122, 3344, 0, True, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    (6, "5.6.7.8", "1.2.3.4", 3344, 1122, 0, True, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    (17, "1.2.3.4", "5.6.7.8", 1122, 3344, 0, True, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    (17, "5.6.7.8", "1.2.3.4", 3344, 1122, 0, True, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    (132, "1.2.3.4", "5.6.7.8", 1122, 3344, 0, True, "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8="),
    (6, "1.2.3.4", "5.6.7.8", 1122, 3344, 1, True, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    (6, "5.6.7.8", "1.2.3.4", 3344, 1122, 1, True, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    (17, "1.2.3.4", "5.6.7.8", 1122, 3344, 1, True, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
    (132, "5.6.7.8", "1.2.3.4", 3344, 1122, 1, True, "1:uitchpn5MMGAQKBJh7bIr/bAr7s="),
    (6, "1.2.3.4", "5.6.7.8", 1122, 3344, 0, False, "1:c026f7386ef200559e95a53276ed03fb5db908b3"),
    (17, "5.6.7.8", "1.2.3.4", 3344, 1122, 0, False, "1:d0cbbd227431eb3e1988264cffb1d78b658c84e8"),
    (
        6,
        "2001:470:e5bf:dead:4957:2174:e82c:4887",
        "2607:f8b0:400c:c03::1a",
        63943,
        25,
        0,
        True,
        "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
    ),
    (
        6,
        "2607:f8b0:400c:c03::1a",
        "2001:470:e5bf:dead:4957:2174:e82c:4887",
        25,
        63943,
        0,
        True,
        "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
    ),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80, 0, True, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855, 0, True, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53, 0, True, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (132, "192.168.170.8", "192.168.170.56", 7, 7, 0, True, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
    (132, "192.168.170.56", "192.168.170.8", 7, 7, 0, True, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
]


@pytest.mark.parametrize(
    ("proto", "saddr", "daddr", "sport", "dport", "seed", "b64", "expected"), SPEC_VECTORS
)
def test_community_id_matches_the_spec_vectors(
    proto: int,
    saddr: str,
    daddr: str,
    sport: int,
    dport: int,
    seed: int,
    b64: bool,
    expected: str,
) -> None:
    got = community_id(_raw(saddr), _raw(daddr), sport, dport, proto=proto, seed=seed, b64=b64)
    assert got == expected


def test_connections_carry_the_community_id_of_their_4_tuple() -> None:
    run = analyze(AnalyzeOptions(paths=(str(CAPTURES / "zeek" / "sf_graceful.pcap"),)))
    (conn,) = list(run.connections())
    # make_zeek.py: 10.1.0.1:40000 -> 10.1.0.2:80, hashed in both orders alike.
    expected = community_id(_raw("10.1.0.2"), _raw("10.1.0.1"), 80, 40000)
    assert conn.community_id == expected
    assert conn.community_id.startswith("1:") and len(conn.community_id) == 30


@pytest.mark.parametrize("name", sorted(ZEEK_CAPTURES))
def test_zeek_conn_state_per_state(name: str) -> None:
    _build, expected = ZEEK_CAPTURES[name]
    run = analyze(AnalyzeOptions(paths=(str(CAPTURES / "zeek" / f"{name}.pcap"),)))
    states = [c.zeek_conn_state for c in run.connections()]
    assert states == [expected]


def test_every_zeek_state_has_a_capture() -> None:
    documented = {
        "S0",
        "S1",
        "SF",
        "REJ",
        "S2",
        "S3",
        "RSTO",
        "RSTR",
        "RSTOS0",
        "RSTRH",
        "SH",
        "SHR",
        "OTH",
    }
    assert {state for _b, state in ZEEK_CAPTURES.values()} == documented


def test_zeek_captures_are_what_the_script_makes(tmp_path: Path) -> None:
    from craft import write_pcap

    for name, (build, _state) in ZEEK_CAPTURES.items():
        out = tmp_path / f"{name}.pcap"
        write_pcap(str(out), build().packets)
        assert out.read_bytes() == (CAPTURES / "zeek" / f"{name}.pcap").read_bytes(), name


def test_demo_capture_zeek_states() -> None:
    # make_demo.py's six connections, by Zeek's rules: graceful and piggybacked
    # closes are SF, refused REJ, the client's abort RSTO, the client's FIN with
    # the server stuck in CLOSE_WAIT S2, the unanswered SYN S0.
    run = analyze(AnalyzeOptions(paths=(str(CAPTURES / "demo.pcap"),)))
    got = {c.stream: c.zeek_conn_state for c in run.connections()}
    assert got == {0: "SF", 1: "SF", 2: "REJ", 3: "RSTO", 4: "S2", 5: "S0"}


def test_likely_server_ports_cover_the_common_services() -> None:
    # Zeek's base/protocols scripts: http 80/8080, ssl 443, ssh 22, smtp 25.
    assert {22, 25, 80, 443, 8080} <= LIKELY_SERVER_PORTS
    assert 40000 not in LIKELY_SERVER_PORTS


def test_midstream_from_the_server_port_is_flipped(tmp_path: Path) -> None:
    # WantConnection: a first packet without SYN from a likely server port
    # (80) to an unlikely one flips the roles, so the FIN of the side on port
    # 80 is the responder's: SHR when the other side (PARTIAL) sent data.
    from craft import Flow, write_pcap

    f = Flow(client=("10.1.0.1", 40000), server=("10.1.0.2", 80))
    f.c("S", record=False)
    f.s("SA", record=False)
    f.c("A", record=False)
    f.s("PA", b"late data")
    f.c("A")
    f.s("FA")
    path = tmp_path / "midstream_fin.pcap"
    write_pcap(str(path), f.packets)
    run = analyze(AnalyzeOptions(paths=(str(path),)))
    assert [c.zeek_conn_state for c in run.connections()] == ["SHR"]


def test_a_fin_after_the_originators_rst_keeps_rstos0(tmp_path: Path) -> None:
    # History "SRF": the RST comes before any F, so ^?S[^HAFGIQ]*R.* matches; the
    # FIN after it leaves Zeek's RESET endpoint as it is.
    from craft import Flow, write_pcap

    f = Flow(client=("10.1.0.1", 40000), server=("10.1.0.2", 80))
    f.c("S")
    f.c("R")
    f.c("F", seq=f.client_isn + 1)
    path = tmp_path / "syn_rst_fin.pcap"
    write_pcap(str(path), f.packets)
    run = analyze(AnalyzeOptions(paths=(str(path),)))
    assert [c.zeek_conn_state for c in run.connections()] == ["RSTOS0"]


def _trackers(path: Path) -> list[Tracker]:
    """Every tracker of a capture, straight from the flow table."""
    from collections import Counter

    from fintrace.decode import DecodeStats, segments
    from fintrace.flowtable import FlowTable
    from fintrace.reader import CaptureFile
    from fintrace.reassembly import Reassembler

    skipped: Counter[str] = Counter()
    table = FlowTable(linger=float("inf"))
    with CaptureFile(path) as cap:
        segs = segments(cap.records(), DecodeStats(skipped), Reassembler(skipped))
        out = list(table.consume(segs))
    return out + table.finish()


def test_the_common_shapes_shortcut_agrees_with_the_replay() -> None:
    from fintrace.interop import _common_conn_state, replayed_conn_state

    from conftest import capture_files, corpus_files

    shortcut: Counter[str] = Counter()
    for path in capture_files() + corpus_files():
        for conn in _trackers(path):
            common = _common_conn_state(conn)
            if common is not None:
                shortcut[common] += 1
                assert common == replayed_conn_state(conn), (path.name, conn.stream)
    # The captures hold every shape the shortcut knows, so each is compared.
    assert set(shortcut) == {"SF", "S1", "S2", "S3", "REJ", "RSTO", "RSTR", "S0"}, shortcut


def test_the_shortcut_leaves_a_flag_the_tracker_did_not_keep_to_the_replay() -> None:
    """A FIN or RST a side sent but the tracker kept no frame of (it came after
    the connection's RST) is one of the replay's late events, which can change
    the verdict (a late FIN makes S2 or S3 an SF): the shortcut must not answer
    for such a connection as if the flag were not there."""
    from fintrace.decode import FIN, RST
    from fintrace.interop import _common_conn_state, replayed_conn_state

    from conftest import capture_files

    planted: Counter[str] = Counter()
    for path in capture_files():
        for conn in _trackers(path):
            before = _common_conn_state(conn)
            if before is None:
                continue
            for h in (conn.a, conn.b):
                for flag in (FIN, RST):
                    kept = h.flags_seen
                    if kept & flag:
                        continue
                    h.flags_seen = kept | flag
                    sent = conn.a.bytes, conn.b.bytes
                    # With and without payload: resets on both sides of a
                    # connection that carried none are Zeek's REJ.
                    for a_bytes, b_bytes in (sent, (0, 0)):
                        conn.a.bytes, conn.b.bytes = a_bytes, b_bytes
                        after = _common_conn_state(conn)
                        if after is not None:
                            replayed = replayed_conn_state(conn)
                            assert after == replayed, (path.name, conn.stream, flag, a_bytes)
                    conn.a.bytes, conn.b.bytes = sent
                    planted[before] += 1
                    h.flags_seen = kept
    assert {"S2", "S3", "RSTO", "RSTR"} <= set(planted), planted
