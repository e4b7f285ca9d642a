"""Each finding appears on a capture made to show it, with the right numbers, and not on
a clean capture. Expected numbers come from how each capture is built (times and byte
counts below), and the Wireshark filters are checked against tshark.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fintrace.findings import Finding, Severity, findings
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.render.findings_view import NOTHING_WRONG, render_findings

from craft import T0, Flow, merge, write_pcap


def report(path: Path, **options: Any) -> tuple[list[Finding], dict[str, Any]]:
    run = analyze(AnalyzeOptions(paths=(str(path),), **options))
    for _ in run.connections():
        pass
    s = run.summary()
    return findings(s, run.captures), s


def of_kind(found: list[Finding], kind: str) -> list[Finding]:
    return [f for f in found if f.kind == kind]


def play(f: Flow, script: str) -> None:
    """Segments without payload: ``"c:S s:SA c:A"`` is client SYN, server SYN+ACK, client ACK."""
    for step in script.split():
        side, flags = step.split(":")
        (f.c if side == "c" else f.s)(flags)


def write(tmp_path: Path, name: str, *flows: Flow) -> Path:
    path = tmp_path / name
    write_pcap(str(path), merge(*(f.packets for f in flows)))
    return path


def tshark_ports(path: Path, display_filter: str) -> set[int]:
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields",
         "-e", "tcp.srcport", "-e", "tcp.dstport"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return {int(p) for line in out.stdout.split() for p in line.split("\t")}


# -- the captures ------------------------------------------------------------------


def clean_flows() -> list[Flow]:
    """Closes that are all fine: graceful, piggybacked, both sides closing first."""
    flows = []
    for i in range(3):
        f = Flow(client=("10.0.0.1", 40000 + i), server=("10.0.0.2", 80), t=T0 + i)
        play(f, "c:S s:SA c:A")
        f.c("PA", b"GET")
        f.s("PA", b"OK")
        play(f, "c:FA s:A s:FA c:A")
        flows.append(f)
    f = Flow(client=("10.0.0.3", 40100), server=("10.0.0.2", 80), t=T0 + 5)
    play(f, "c:S s:SA c:A s:FA c:FA s:A")
    flows.append(f)
    return flows


def stuck_flows() -> list[Flow]:
    """Three clients' FINs that 10.0.0.11:5432 acknowledges and never answers.

    Connection k (k = 0, 1, 2) starts at T0 + k; the server acknowledges the FIN
    with its 7th segment, at T0 + k + 0.007. A keep-alive of connection 0 at
    T0 + 92.007 ends the capture, so they wait 92, 91 and 90 s.
    """
    flows = []
    for k in range(3):
        f = Flow(client=("10.0.0.5", 41000 + k), server=("10.0.0.11", 5432), t=T0 + k)
        play(f, "c:S s:SA c:A")
        f.c("PA", b"q")
        f.s("PA", b"r")
        play(f, "c:FA s:A")
        flows.append(f)
    flows[0].c("A", dt=92.0)
    return flows


# -- each finding on its capture -----------------------------------------------------


def test_clean_capture_has_no_findings_and_says_so_in_one_line(tmp_path: Path) -> None:
    found, s = report(write(tmp_path, "clean.pcap", *clean_flows()))
    assert s["connections"] == 4
    assert found == []
    console = Console(record=True, width=100, color_system=None)
    render_findings(console, found)
    lines = [line for line in console.export_text().splitlines() if line.strip()]
    assert lines == ["Findings: " + NOTHING_WRONG]


def test_stuck_close_wait_per_service(tmp_path: Path, tshark: str) -> None:
    path = write(tmp_path, "stuck.pcap", *stuck_flows(), *clean_flows())
    found, _ = report(path)
    (f,) = of_kind(found, "stuck_close_wait")
    assert f.severity is Severity.CRITICAL
    assert f.title == "10.0.0.11:5432 leaves connections in CLOSE_WAIT: 3 stuck, oldest 92.0 s"
    assert f.details[0].startswith("3 connections got the peer's FIN")
    ((cap, flt),) = f.filters
    assert cap == str(path)
    # Streams are numbered by first packet: the stuck connection k and the clean
    # connection k both start at T0 + k, the stuck one listed first.
    assert flt == "tcp.stream in {0, 2, 4}"
    assert tshark_ports(path, flt) == {41000, 41001, 41002, 5432}


def test_stuck_threshold_follows_stuck_after(tmp_path: Path) -> None:
    path = write(tmp_path, "stuck.pcap", *stuck_flows())
    found, _ = report(path, stuck_after=91.5)
    (f,) = of_kind(found, "stuck_close_wait")
    # Only the connection that waited 92 s was idle long enough; 91 s and 90 s were not.
    assert f.title.startswith("10.0.0.11:5432 leaves connections in CLOSE_WAIT: 1 stuck")
    assert "2 more connections in CLOSE_WAIT for less than 91.5 s." in f.details


def test_fin_wait_2_seen_from_the_active_closer(tmp_path: Path) -> None:
    found, _ = report(write(tmp_path, "stuck.pcap", *stuck_flows()))
    (f,) = of_kind(found, "fin_wait_2")
    assert f.severity is Severity.WARNING
    assert f.title == "10.0.0.5 waits in FIN_WAIT_2 on 3 connections, longest 92.0 s"
    assert "waiting on 10.0.0.11:5432 (3)" in f.details[0]


def test_resets_that_threw_data_away(tmp_path: Path, tshark: str) -> None:
    flows = []
    # The client resets while the server's last 1000 (then 500) bytes are unacknowledged.
    for i, lost in enumerate((1000, 500)):
        f = Flow(client=("10.0.0.4", 42000 + i), server=("10.0.0.10", 80), t=T0 + i)
        play(f, "c:S s:SA c:A")
        f.c("PA", b"upload")
        f.s("PA", b"x" * lost)
        f.c("RA", ack=f.server_nxt - lost)
        flows.append(f)
    path = write(tmp_path, "lost.pcap", *flows, *clean_flows())
    found, _ = report(path)
    (f,) = of_kind(found, "reset_data_lost")
    assert f.severity is Severity.CRITICAL
    assert f.title == "2 resets threw away 1500 bytes of unacknowledged data"
    assert "Sent by 10.0.0.4: 2 RSTs, 1500 bytes." in f.details
    ((_, flt),) = f.filters
    assert tshark_ports(path, flt) == {42000, 42001, 80}


def _piggybacked(i: int, *, client_closes: bool) -> Flow:
    f = Flow(client=("10.0.0.1", 50000 + i), server=("10.0.0.2", 80), t=T0 + 2 * i)
    play(f, "c:S s:SA c:A")
    if client_closes:
        play(f, "c:FA s:FA c:A")
    else:
        play(f, "s:FA c:FA s:A")
    return f


@pytest.mark.parametrize(
    ("ports", "severity", "share"),
    [(40, Severity.WARNING, "25.0%"), (16, Severity.CRITICAL, "62.5%")],
)
def test_port_exhaustion(tmp_path: Path, ports: int, severity: Severity, share: str) -> None:
    # Ten client-closed connections 2 s apart: all ten TIME_WAITs (60 s) overlap.
    path = write(tmp_path, "tw.pcap", *(_piggybacked(i, client_closes=True) for i in range(10)))
    found, s = report(path, ephemeral_ports=ports)
    assert s["time_wait"]["by_host"][0]["peak"] == 10
    (f,) = of_kind(found, "port_exhaustion")
    assert f.severity is severity
    assert f.title == (
        f"10.0.0.1 → 10.0.0.2:80: 10 ports in TIME_WAIT at once, {share} of the ephemeral range"
    )
    assert f.filters == (("", "ip.addr == 10.0.0.1 && ip.addr == 10.0.0.2 && tcp.port == 80"),)
    # With the default range (28232 ports) ten are nothing to report.
    assert of_kind(report(path)[0], "port_exhaustion") == []


def test_server_side_time_wait_is_no_port_exhaustion(tmp_path: Path) -> None:
    path = write(tmp_path, "tw.pcap", *(_piggybacked(i, client_closes=False) for i in range(10)))
    found, s = report(path, ephemeral_ports=16)
    assert s["time_wait"]["by_host"][0] == {
        "host": "10.0.0.2", "connections": 10, "peak": 10, "peak_ts": pytest.approx(T0 + 0.006)
    }  # fmt: skip
    assert found == []


def test_slow_closer_percentiles(tmp_path: Path) -> None:
    flows = []
    # The server sends its FIN this long after acknowledging the client's.
    for i, wait in enumerate((0.010, 0.020, 2.0, 3.0)):
        f = Flow(client=("10.0.0.3", 43000 + i), server=("10.0.0.20", 8080), t=T0 + 10 * i)
        play(f, "c:S s:SA c:A c:FA s:A")
        f.s("FA", dt=wait)
        f.c("A")
        flows.append(f)
    found, s = report(write(tmp_path, "slow.pcap", *flows))
    (svc,) = s["close_wait"]["by_service"]
    # Nearest rank over 0.01 0.02 2 3: p50 is the 2nd, p95 the 4th.
    assert svc["p50_s"] == pytest.approx(0.020, abs=2e-6)
    assert svc["p95_s"] == pytest.approx(3.0, abs=2e-6)
    (f,) = of_kind(found, "slow_close")
    assert f.severity is Severity.WARNING
    assert f.title == "10.0.0.20:8080 is slow to close: p95 3.0 s, max 3.0 s"
    assert (
        "over 4 completed closes: p50 20.0 ms, p95 3.0 s, max 3.0 s; 2 took 1.0 s" in (f.details[0])
    )
    assert f.filters[0][1] == "tcp.stream in {2, 3}"


def test_one_slow_close_among_many_is_info(tmp_path: Path) -> None:
    flows = []
    for i in range(20):
        f = Flow(client=("10.0.0.3", 43000 + i), server=("10.0.0.20", 8080), t=T0 + i)
        play(f, "c:S s:SA c:A c:FA s:A")
        f.s("FA", dt=5.0 if i == 7 else 0.001)
        f.c("A")
        flows.append(f)
    found, _ = report(write(tmp_path, "slow.pcap", *flows))
    (f,) = of_kind(found, "slow_close")
    # p95 of 20 is the 19th value: fast. Only the maximum is slow.
    assert f.severity is Severity.INFO
    assert f.title == "10.0.0.20:8080 is slow to close: p95 1.0 ms, max 5.0 s"
    assert f.filters[0][1] == "tcp.stream eq 7"


def test_syn_reusing_a_tuple_within_two_msl(tmp_path: Path) -> None:
    first = _piggybacked(0, client_closes=True)  # last packet at T0 + 0.006
    tup = {"client": ("10.0.0.1", 50000), "server": ("10.0.0.2", 80)}
    again = Flow(**tup, client_isn=77_000, t=T0 + 5.006)
    play(again, "c:S s:SA c:A c:FA s:FA c:A")
    late = Flow(**tup, client_isn=99_000, t=T0 + 5.012 + 61)
    play(late, "c:S s:SA c:A")
    found, s = report(write(tmp_path, "reuse.pcap", first, again, late))
    (f,) = of_kind(found, "tuple_reuse")
    assert f.title == "1 new connection reused a 4-tuple within 2×MSL"
    # Its SYN came 5.001 s after the first connection's last packet; the third
    # connection's SYN came 61.001 s after the second's, past 2×MSL.
    assert s["time_wait"]["reused_within_2msl"]["min_gap_s"] == pytest.approx(5.001, abs=2e-6)
    assert f.details[0].startswith("The shortest gap was 5.0 s")
    assert f.filters[0][1] == "tcp.stream eq 1"


def test_resets_by_sender_and_phase(tmp_path: Path) -> None:
    flows = []
    for i in range(2):  # RST from the server, established, everything acknowledged
        f = Flow(client=("10.0.0.8", 44000 + i), server=("10.0.0.30", 80), t=T0 + i)
        play(f, "c:S s:SA c:A")
        f.c("PA", b"hi")
        play(f, "s:A s:R")
        flows.append(f)
    f = Flow(client=("10.0.0.8", 44010), server=("10.0.0.30", 80), t=T0 + 3)
    play(f, "c:S s:SA c:A c:FA s:A s:R")  # closing
    flows.append(f)
    f = Flow(client=("10.0.0.8", 44020), server=("10.0.0.31", 81), t=T0 + 4)
    f.c("S")
    f.s("RA", seq=0)  # refused
    flows.append(f)
    found, s = report(write(tmp_path, "rst.pcap", *flows))
    assert s["resets"]["by_sender"] == {"server": {"established": 2, "closing": 1, "refused": 1}}
    by_title = {f.title: f for f in of_kind(found, "resets")}
    assert set(by_title) == {
        "10.0.0.30 (as server) ended 3 connections with a RST",
        "10.0.0.31 (as server) ended 1 connection with a RST",
    }
    lb = by_title["10.0.0.30 (as server) ended 3 connections with a RST"]
    assert lb.details == (
        "2 while established, before any FIN (abortive close)",
        "1 during the close (after a FIN)",
    )
    assert lb.filters[0][1] == "tcp.stream in {0, 1, 2}"
    assert by_title["10.0.0.31 (as server) ended 1 connection with a RST"].details == (
        "1 refused (RST answering the SYN)",
    )
    assert of_kind(found, "reset_data_lost") == []


def test_unanswered_syns_and_unacknowledged_fin(tmp_path: Path) -> None:
    flows = []
    for i in range(2):
        f = Flow(client=("10.0.0.9", 45000 + i), server=("10.0.0.40", 443), t=T0 + i)
        f.c("S")
        f.c("S", seq=1000, dt=1.0)
        flows.append(f)
    f = Flow(client=("10.0.0.9", 45100), server=("10.0.0.41", 80), t=T0 + 3)
    play(f, "c:S s:SA c:A c:FA")
    flows.append(f)
    found, _ = report(write(tmp_path, "silent.pcap", *flows))
    (u,) = of_kind(found, "unanswered")
    assert u.title == "10.0.0.40:443 did not answer 2 connection attempts"
    assert u.filters[0][1] == "tcp.stream in {0, 1}"
    (fin,) = of_kind(found, "unacked_fin")
    assert (fin.severity, fin.title) == (Severity.INFO, "1 FIN never acknowledged")


def test_everything_at_once_comes_most_severe_first(tmp_path: Path) -> None:
    flows = stuck_flows() + [_piggybacked(i, client_closes=True) for i in range(10)]
    found, _ = report(write(tmp_path, "all.pcap", *flows), ephemeral_ports=40)
    severities = [f.severity for f in found]
    assert severities == sorted(severities, reverse=True)
    assert [f.kind for f in found] == ["stuck_close_wait", "port_exhaustion", "fin_wait_2"]
