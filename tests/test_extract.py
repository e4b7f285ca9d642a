"""``fintrace extract``: the output, read back by tshark, holds exactly the selected
connections' frames, unchanged, in the input's format.

The oracle for "the selected connections' frames" is tshark on the input,
filtered by the selection (by port or by ``tcp.stream``, numbers that Wireshark
gives); frames are compared by timestamp (nanoseconds), length and ports.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from fintrace.cli import main

from conftest import CAPTURES
from craft import T0, Flow, merge, write_pcap, write_pcapng

FIELDS = ("frame.time_epoch", "frame.len", "frame.cap_len", "tcp.srcport", "tcp.dstport")


def frames(tshark: str, path: Path, display_filter: str | None = None) -> list[tuple[str, ...]]:
    cmd = [tshark, "-n", "-r", str(path), "-T", "fields"]
    for f in FIELDS:
        cmd += ["-e", f]
    if display_filter:
        cmd += ["-Y", display_filter]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60)
    return [tuple(line.split("\t")) for line in out.stdout.splitlines()]


def extract(*args: str) -> str:
    result = CliRunner().invoke(main, ["extract", "-q", *args])
    assert result.exit_code == 0, result.output
    return result.output


def flows() -> list[Flow]:
    """A web server, a database that never closes, a reset, interleaved in time."""
    out = []
    for i in range(3):
        f = Flow(client=("10.0.0.1", 40000 + i), server=("10.0.0.2", 80), t=T0 + i * 0.002)
        f.c("S")
        f.s("SA")
        f.c("A")
        f.c("PA", b"GET / HTTP/1.1\r\n\r\n")
        f.s("PA", b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 200)
        f.c("FA")
        f.s("FA")
        f.c("A")
        out.append(f)
    for i in range(2):
        f = Flow(
            client=("10.0.0.3", 41000 + i), server=("10.0.0.4", 5432), t=T0 + 0.001 + i * 0.003
        )
        f.c("S")
        f.s("SA")
        f.c("A")
        f.c("FA")
        f.s("A")
        out.append(f)
    f = Flow(client=("10.0.0.5", 42000), server=("10.0.0.2", 80), t=T0 + 0.0015)
    f.c("S")
    f.s("SA")
    f.c("A")
    f.c("R")
    out.append(f)
    return out


def packets() -> list:  # type: ignore[type-arg]
    return merge(*(f.packets for f in flows()))


@pytest.mark.parametrize("kind", ["pcap", "pcap-nano", "pcapng", "pcap.gz"])
def test_by_port_holds_exactly_those_frames(tmp_path: Path, tshark: str, kind: str) -> None:
    src = tmp_path / "in.pcap"
    if kind == "pcapng":
        src = tmp_path / "in.pcapng"
        write_pcapng(str(src), packets())
    else:
        write_pcap(str(src), packets(), nano=kind == "pcap-nano")
    if kind == "pcap.gz":
        gz = tmp_path / "in.pcap.gz"
        with open(src, "rb") as f, gzip.open(gz, "wb") as g:
            shutil.copyfileobj(f, g)
        src = gz
    out = tmp_path / "out.cap"
    message = extract(str(src), "--port", "5432", "-o", str(out))
    want = frames(tshark, src, "tcp.port == 5432")
    assert len(want) == 10  # two connections of five segments
    assert frames(tshark, out) == want
    assert f"{out}: 10 packets of 2 connections" in message
    head = out.read_bytes()[:24]
    if kind == "pcapng":
        assert head[:4] == b"\x0a\x0d\x0d\x0a"
    else:
        # Same byte order, time resolution, snap length and link type.
        with gzip.open(src) if kind == "pcap.gz" else open(src, "rb") as f:
            assert head == f.read(24)


def test_by_stream_and_close_type(tmp_path: Path, tshark: str) -> None:
    src = tmp_path / "in.pcap"
    write_pcap(str(src), packets())
    out = tmp_path / "out.pcap"
    # Streams in order of first packet: web 0 (T0+.001), db 1 (T0+.002),
    # reset 2 (T0+.0025), web 3 (T0+.003), db 4 (T0+.005), web 5 (T0+.005).
    extract(str(src), "--stream", "0", "--stream", "4", "-o", str(out))
    assert frames(tshark, out) == frames(tshark, src, "tcp.stream in {0, 4}")
    extract(str(src), "--close-type", "reset", "-o", str(out))
    assert frames(tshark, out) == frames(tshark, src, "tcp.port == 42000")


def test_a_real_pcapng_every_connection(tmp_path: Path, tshark: str, corpus: Path) -> None:
    src = corpus / "tcpdump__of13_ericsson.pcapng"
    want = frames(tshark, src, "tcp.stream")
    assert len(want) == 174  # what tshark 4.0 counts in this tcpdump test capture
    out = tmp_path / "out.pcapng"
    extract(str(src), "-o", str(out))
    assert frames(tshark, out) == want


def test_several_files_are_one_capture(tmp_path: Path, tshark: str) -> None:
    pk = packets()
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    # A ring buffer cut mid-connection: the db connections span both files.
    write_pcap(str(a), pk[:14])
    write_pcap(str(b), pk[14:])
    out = tmp_path / "out.pcap"
    extract(str(a), str(b), "--port", "5432", "-o", str(out))
    assert frames(tshark, out) == frames(tshark, a, "tcp.port == 5432") + frames(
        tshark, b, "tcp.port == 5432"
    )
    assert out.read_bytes()[:24] == a.read_bytes()[:24]


def test_mixed_formats_become_pcapng(tmp_path: Path, tshark: str) -> None:
    pk = packets()
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcapng"
    write_pcap(str(a), pk[:14])
    write_pcapng(str(b), pk[14:])
    out = tmp_path / "out.pcapng"
    message = extract(str(a), str(b), "--port", "80", "-o", str(out))
    assert "(pcapng)" in message
    assert out.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    assert frames(tshark, out) == frames(tshark, a, "tcp.port == 80") + frames(
        tshark, b, "tcp.port == 80"
    )


def test_nothing_selected_writes_an_empty_capture(tmp_path: Path, tshark: str) -> None:
    out = tmp_path / "none.pcap"
    extract(str(CAPTURES / "demo.pcap"), "--port", "9", "-o", str(out))
    assert frames(tshark, out) == []
    assert out.read_bytes() == (CAPTURES / "demo.pcap").read_bytes()[:24]


def test_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    src = tmp_path / "in.pcap"
    write_pcap(str(src), packets())
    before = src.read_bytes()
    result = CliRunner().invoke(main, ["extract", "-q", str(src), "-o", str(src)])
    assert result.exit_code == 2
    assert result.output.strip() == f"fintrace: error: {src}: the output would overwrite an input"
    assert src.read_bytes() == before
