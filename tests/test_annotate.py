"""``fintrace annotate``: tshark shows each state comment on the right frame, and every
packet otherwise unchanged.

Expected comments are derived by hand from how captures/make_demo.py builds each
connection and the transition table of TEARDOWN.md.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from click.testing import CliRunner

from fintrace.cli import main

from conftest import CAPTURES
from craft import T0, Flow, write_pcap, write_pcapng

DEMO = CAPTURES / "demo.pcap"


def fields(tshark: str, path: Path, *names: str) -> list[list[str]]:
    cmd = [tshark, "-n", "-r", str(path), "-T", "fields"]
    for n in names:
        cmd += ["-e", n]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60)
    return [line.split("\t") for line in out.stdout.splitlines()]


def comments(tshark: str, path: Path) -> dict[int, str]:
    return {int(f): c for f, c in fields(tshark, path, "frame.number", "frame.comment") if c}


def annotate(*args: str) -> str:
    result = CliRunner().invoke(main, ["annotate", "-q", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_demo_comments_on_the_right_frames(tmp_path: Path, tshark: str) -> None:
    out = tmp_path / "demo.pcapng"
    message = annotate(str(DEMO), "-o", str(out))
    got = comments(tshark, out)
    # Stream 0, graceful: SYN 1, SYN+ACK 2, ACK 3, data 4-5 (no change), FIN 6,
    # its ACK 7, the server's FIN 8, the last ACK 9.
    assert {f: got.get(f) for f in range(1, 10)} == {
        1: "client SYN_SENT",
        2: "client SYN_SENT, server SYN_RECEIVED",
        3: "client SYN_SENT → ESTABLISHED, server SYN_RECEIVED → ESTABLISHED",
        4: None,
        5: None,
        6: "client ESTABLISHED → FIN_WAIT_1, server ESTABLISHED",
        7: "client FIN_WAIT_1 → FIN_WAIT_2, server ESTABLISHED → CLOSE_WAIT",
        8: "client FIN_WAIT_2, server CLOSE_WAIT → LAST_ACK",
        9: "client FIN_WAIT_2 → TIME_WAIT, server LAST_ACK → CLOSED",
    }
    # Stream 1, piggybacked from the server: the client's FIN+ACK (16) both
    # acknowledges the server's FIN and closes, ack applied first.
    assert got[15] == "client ESTABLISHED, server ESTABLISHED → FIN_WAIT_1"
    assert got[16] == "client ESTABLISHED → CLOSE_WAIT → LAST_ACK, server FIN_WAIT_1 → FIN_WAIT_2"
    assert got[17] == "client LAST_ACK → CLOSED, server FIN_WAIT_2 → TIME_WAIT"
    # Stream 2, refused: the RST (19) resets both; the server is first seen there.
    assert got[19] == "client SYN_SENT → RESET, server RESET"
    # Stream 3: the client's RST at frame 25.
    assert got[25] == "client ESTABLISHED → RESET, server ESTABLISHED → RESET"
    # Stream 4 is left in CLOSE_WAIT: nothing changes after frame 32, nor at the
    # keep-alive (35); stream 5's second SYN (34) changes nothing either.
    assert got[32] == "client FIN_WAIT_1 → FIN_WAIT_2, server ESTABLISHED → CLOSE_WAIT"
    assert 34 not in got
    assert 35 not in got
    assert len(got) == 25
    assert f"{out}: 35 packets, 25 comments on 6 connections" in message


def test_every_packet_is_copied_unchanged(tmp_path: Path, tshark: str) -> None:
    keys = ("frame.number", "frame.time_epoch", "frame.len", "frame.cap_len", "tcp.stream")
    out = tmp_path / "demo.pcapng"
    annotate(str(DEMO), "-o", str(out))
    assert fields(tshark, out, *keys) == fields(tshark, DEMO, *keys)
    raw = ("frame.number", "tcp.payload", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags")
    assert fields(tshark, out, *raw) == fields(tshark, DEMO, *raw)


def test_nanosecond_timestamps_survive(tmp_path: Path, tshark: str) -> None:
    f = Flow(client=("10.0.0.1", 40000), server=("10.0.0.2", 80), t=T0 + 0.000000123)
    f.c("S")
    f.s("SA", dt=0.000000456)
    f.c("A")
    src = tmp_path / "nano.pcap"
    write_pcap(str(src), f.packets, nano=True)
    out = tmp_path / "nano.pcapng"
    annotate(str(src), "-o", str(out))
    times = fields(tshark, out, "frame.time_epoch")
    assert times == fields(tshark, src, "frame.time_epoch")
    # The second record's own header (after the 24-byte file header and the
    # first record): seconds and nanoseconds, as written.
    raw = src.read_bytes()
    first_len = struct.unpack_from("<I", raw, 24 + 8)[0]
    sec, nsec = struct.unpack_from("<II", raw, 24 + 16 + first_len)
    assert nsec % 1000 != 0  # the capture does use the nanoseconds
    assert times[1] == [f"{sec}.{nsec:09d}"]


def test_existing_comments_are_kept(tmp_path: Path, tshark: str) -> None:
    f = Flow(client=("10.0.0.1", 40000), server=("10.0.0.2", 80))
    f.c("S").comments = [b"seen by the ops team"]
    f.s("SA")
    f.c("A")
    src = tmp_path / "commented.pcapng"
    write_pcapng(str(src), f.packets)
    out = tmp_path / "out.pcapng"
    annotate(str(src), "-o", str(out))
    # tshark joins a frame's comments with a comma.
    assert comments(tshark, out)[1] == "seen by the ops team,client SYN_SENT"


def test_filters_choose_the_connections(tmp_path: Path, tshark: str) -> None:
    out = tmp_path / "stream3.pcapng"
    annotate(str(DEMO), "--stream", "3", "-o", str(out))
    assert sorted(comments(tshark, out)) == [20, 21, 22, 25]
    assert len(fields(tshark, out, "frame.number")) == 35


def test_big_endian_pcapng_without_tcp_is_copied(tmp_path: Path, tshark: str, corpus: Path) -> None:
    src = corpus / "gopacket__be__test100.pcapng"
    out = tmp_path / "out.pcapng"
    annotate(str(src), "-o", str(out))
    keys = ("frame.number", "frame.time_epoch", "frame.len", "frame.interface_id")
    assert fields(tshark, out, *keys) == fields(tshark, src, *keys)
    assert comments(tshark, out) == {}


def test_one_capture_only() -> None:
    result = CliRunner().invoke(main, ["annotate", "-q", str(DEMO), str(DEMO), "-o", "x.pcapng"])
    assert result.exit_code == 2
    assert result.output.strip() == "fintrace: error: annotate takes exactly one capture"
