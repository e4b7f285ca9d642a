"""What fintrace must decode from each capture of ``captures/formats/``.

Every expected value below follows from how ``captures/make_formats.py``
builds the capture (its docstrings say the same in words), never from
fintrace's output. Most captures hold the same *pair*: connection A (frames
1-9, a graceful close: 18 request bytes, 19 response bytes), a UDP datagram
(frame 10) and connection B (frames 11-15, reset by the server after 5
client bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.render.jsonout import connection_dict

from conftest import CAPTURES

FORMATS = CAPTURES / "formats"
T0 = 1_700_000_000.0
MS = 0.001


@dataclass(frozen=True)
class Expect:
    """One connection as the capture was built."""

    stream: int
    client: str  # "ip port"
    server: str
    first_frame: int
    last_frame: int
    packets: int
    payload: tuple[int, int] | None = None  # (client, server); None: not asserted
    close_type: str | None = None
    first_ts: float | None = None
    last_ts: float | None = None


def run(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The connections (by stream) and the one ``captures[]`` entry of a file."""
    r = analyze(AnalyzeOptions(paths=(str(path),)))
    conns = sorted((connection_dict(c) for c in r.connections()), key=lambda c: c["stream"])
    (info,) = r.captures
    return conns, info.as_dict()


def endpoint(c: dict[str, Any]) -> str:
    return f"{c['ip']} {c['port']}"


def check(
    name: str, expected: list[Expect], skipped: dict[str, int], frames: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    conns, info = run(FORMATS / name)
    assert [c["stream"] for c in conns] == [e.stream for e in expected], name
    for c, e in zip(conns, expected, strict=True):
        got = (endpoint(c["client"]), endpoint(c["server"]), c["first_frame"], c["last_frame"])
        assert got == (e.client, e.server, e.first_frame, e.last_frame), (name, e.stream)
        assert c["packets"] == e.packets, (name, e.stream)
        if e.payload is not None:
            assert (c["payload_bytes"]["client"], c["payload_bytes"]["server"]) == e.payload
        if e.close_type is not None:
            assert c["close_type"] == e.close_type, (name, e.stream)
        if e.first_ts is not None:
            assert c["first_ts"] == pytest.approx(e.first_ts, abs=1e-6), (name, e.stream)
        if e.last_ts is not None:
            assert c["last_ts"] == pytest.approx(e.last_ts, abs=1e-6), (name, e.stream)
    assert info["skipped"] == skipped, name
    assert info["packets"] == frames, name
    assert info["tcp_packets"] == frames - sum(skipped.values()), name
    assert not info["truncated"] and not info["warnings"], name
    return conns, info


def host(v: int, n: int) -> str:
    return f"10.0.0.{n}" if v == 4 else f"fd00::{n}"


def pair(first: int, second: int | None, offset: float = 0.0) -> list[Expect]:
    """Connections A (IPv``first``) and B (IPv``second``; None: B is not decoded)."""
    a = Expect(
        0,
        f"{host(first, 1)} 40000",
        f"{host(first, 2)} 80",
        1,
        9,
        9,
        (18, 19),
        "graceful",
        T0 + MS + offset,
        T0 + 9 * MS + offset,
    )
    if second is None:
        return [a]
    b = Expect(
        1,
        f"{host(second, 1)} 40001",
        f"{host(second, 3)} 443",
        11,
        15,
        5,
        (5, 0),
        "reset",
        T0 + 11 * MS + offset,
        T0 + 15 * MS + offset,
    )
    return [a, b]


# capture, (A's IP version, B's), skipped, frames, format, compression, link types
PAIRS = [
    ("pcap_le_usec.pcap", (4, 6), {"not_tcp": 1}, 15, "pcap", None, [1]),
    ("pcap_be_usec.pcap", (4, 6), {"not_tcp": 1}, 15, "pcap", None, [1]),
    ("pcapng_named.pcap", (4, 6), {"not_tcp": 1}, 15, "pcapng", None, [1]),
    ("pcap_named.pcapng", (4, 6), {"not_tcp": 1}, 15, "pcap", None, [1]),
    ("gzip_content.pcap", (4, 6), {"not_tcp": 1}, 15, "pcap", "gzip", [1]),
    ("gzip_pcapng.pcapng.gz", (4, 6), {"not_tcp": 1}, 15, "pcapng", "gzip", [1]),
    ("pcapng_other_blocks.pcapng", (4, 6), {"not_tcp": 1}, 15, "pcapng", None, [1]),
    ("ethernet_llc_snap.pcap", (4, 6), {"not_tcp": 1}, 15, "pcap", None, [1]),
    ("pppoe_session.pcap", (4, 6), {"not_tcp": 1}, 15, "pcap", None, [1]),
    ("linux_sll.pcap", (4, 6), {"not_tcp": 1}, 15, "pcap", None, [113]),
    ("linux_sll2.pcap", (6, 4), {"not_tcp": 1}, 15, "pcap", None, [276]),
    ("raw_ip_lt12.pcap", (4, 6), {"not_tcp": 1}, 15, "pcap", None, [12]),
    ("raw_ip_lt14.pcap", (4, 6), {"not_tcp": 1}, 15, "pcap", None, [14]),
    ("raw_ip_lt101.pcap", (4, 6), {"not_tcp": 1}, 15, "pcap", None, [101]),
    ("raw_ipv4_lt228.pcap", (4, 4), {"not_tcp": 1}, 15, "pcap", None, [228]),
    ("raw_ipv6_lt229.pcap", (6, 6), {"not_tcp": 1}, 15, "pcap", None, [229]),
    # Wireshark's IPv4 dissector hands a version-6 header to IPv6 ...
    ("raw_lt228_with_ipv6.pcap", (4, 6), {"not_tcp": 1}, 15, "pcap", None, [228]),
    # ... its IPv6 dissector does not hand a version-4 header back.
    (
        "raw_lt229_with_ipv4.pcap",
        (6, None),
        {"not_tcp": 1, "bad_ip_header": 5},
        15,
        "pcap",
        None,
        [229],
    ),
    # Frame 16: a SYN whose family Wireshark does not read as IP.
    ("null_le.pcap", (4, 6), {"not_tcp": 1, "not_ip": 1}, 16, "pcap", None, [0]),
    ("null_be.pcap", (4, 6), {"not_tcp": 1, "not_ip": 1}, 16, "pcap", None, [0]),
    ("loop_lt108.pcap", (6, 4), {"not_tcp": 1, "not_ip": 1}, 16, "pcap", None, [108]),
    ("ipv4_options.pcap", (4, 4), {"not_tcp": 1}, 15, "pcap", None, [1]),
    # Wireshark's IPv6 dissector stops at a version other than 6.
    ("ipv6_bad_version.pcap", (4, None), {"not_tcp": 1, "bad_ip_header": 5}, 15, "pcap", None, [1]),
    # Cut by the snap length; lengths come from the IP headers.
    ("snaplen_54.pcap", (4, 4), {"not_tcp": 1}, 15, "pcap", None, [1]),
    ("snaplen_v6_74.pcap", (6, 6), {"not_tcp": 1}, 15, "pcap", None, [1]),
    # 68 bytes leave 14 of B's IPv6 TCP headers: Wireshark files them nowhere.
    (
        "snaplen_68.pcap",
        (4, None),
        {"not_tcp": 1, "truncated_tcp_header": 5},
        15,
        "pcap",
        None,
        [1],
    ),
]


@pytest.mark.parametrize(
    ("name", "versions", "skipped", "frames", "fmt", "compression", "linktypes"),
    PAIRS,
    ids=[p[0] for p in PAIRS],
)
def test_the_pair_is_decoded(
    name: str,
    versions: tuple[int, int | None],
    skipped: dict[str, int],
    frames: int,
    fmt: str,
    compression: str | None,
    linktypes: list[int],
) -> None:
    _, info = check(name, pair(*versions), skipped, frames)
    assert (info["format"], info["compression"], info["linktypes"]) == (fmt, compression, linktypes)


@pytest.mark.parametrize("name", ["pcap_le_nsec.pcap", "pcap_be_nsec.pcap"])
def test_nanosecond_pcap_keeps_the_nanoseconds(name: str) -> None:
    # Every record is 500 ns later than in the microsecond files.
    conns, _ = check(name, pair(4, 6), {"not_tcp": 1}, 15)
    assert conns[0]["first_ts"] == pytest.approx(T0 + 0.0010005, abs=2.5e-7)
    assert conns[1]["last_ts"] == pytest.approx(T0 + 0.0150005, abs=2.5e-7)


def test_pcapng_sections_of_both_byte_orders_continue_one_capture() -> None:
    # A: frames 1-4 (section 1), 5-6 (section 2, interface 1), 13-15
    # (section 3); the UDP datagram and B on interface 0 of section 2.
    a, b = pair(4, 4)
    a = Expect(0, a.client, a.server, 1, 15, 9, (18, 19), "graceful", T0 + MS, T0 + 15 * MS)
    b = Expect(1, b.client, b.server, 8, 12, 5, (5, 0), "reset", T0 + 8 * MS, T0 + 12 * MS)
    _, info = check("pcapng_sections.pcapng", [a, b], {"not_tcp": 1}, 15)
    assert sorted(info["linktypes"]) == [1, 101, 113]


def test_pcapng_interfaces_of_eight_link_types() -> None:
    linktypes = [1, 101, 113, 276, 0, 108, 9, 104]
    expected = [
        Expect(
            i,
            f"10.0.0.1 {41000 + i}",
            "10.0.0.2 80",
            9 * i + 1,
            9 * i + 9,
            9,
            (18, 19),
            "graceful",
            T0 + i * 0.1 + MS,
            T0 + i * 0.1 + 9 * MS,
        )
        for i in range(8)
    ]
    _, info = check("pcapng_linktypes.pcapng", expected, {}, 72)
    assert sorted(info["linktypes"]) == sorted(linktypes)


def test_pcapng_timestamp_resolution_and_offset_per_interface() -> None:
    # Interface i: ns, ms, 2^-20 s, µs from if_tsoffset; connection i starts
    # at T0 + i s. Interface 0 carries 250 ns more than the others.
    expected = [
        Expect(
            i,
            f"10.0.0.1 {42000 + i}",
            "10.0.0.2 80",
            9 * i + 1,
            9 * i + 9,
            9,
            (18, 19),
            "graceful",
            T0 + i + MS,
            T0 + i + 9 * MS,
        )
        for i in range(4)
    ]
    conns, _ = check("pcapng_tsresol.pcapng", expected, {}, 36)
    assert conns[0]["first_ts"] == pytest.approx(T0 + 0.00100025, abs=2.5e-7)


def test_simple_and_obsolete_packet_blocks() -> None:
    # A's last six packets are simple packet blocks, which carry no time:
    # they keep the time of the last block that had one (A's third packet).
    # The request among them is cut to the interface's 96-byte snap length.
    a, b = pair(4, 4)
    a = Expect(0, a.client, a.server, 1, 9, 9, (18, 19), "graceful", T0 + MS, T0 + 3 * MS)
    check("pcapng_blocks.pcapng", [a, b], {"not_tcp": 1}, 15)


def test_pcapng_blocks_wireshark_shows_as_frames_are_counted_as_frames() -> None:
    # A systemd journal export block is frame 2; two custom blocks are
    # frames 8 and 9 (Wireshark 4.0 lists all three as frames).
    a, b = pair(4, 6)
    a = Expect(0, a.client, a.server, 1, 12, 9, (18, 19), "graceful")
    b = Expect(1, b.client, b.server, 14, 18, 5, (5, 0), "reset")
    conns, info = run(FORMATS / "pcapng_record_blocks.pcapng")
    got = [(c["stream"], c["first_frame"], c["last_frame"], c["packets"]) for c in conns]
    assert got == [(e.stream, e.first_frame, e.last_frame, e.packets) for e in (a, b)]
    assert info["packets"] == 18


def test_vlan_stacks() -> None:
    # Stacks 0-5 decode (stack 4 is IPv6); stack 6's outer TPID 0x9200 is no
    # VLAN tag to Wireshark 4.0: its 9 frames, and the tagged ARP, are not IP.
    expected = [
        Expect(
            i,
            f"{host(6 if i == 4 else 4, 1)} {43000 + i}",
            f"{host(6 if i == 4 else 4, 2)} 80",
            9 * i + 1,
            9 * i + 9,
            9,
            (18, 19),
            "graceful",
        )
        for i in range(6)
    ]
    check("vlan_stacks.pcap", expected, {"not_ip": 10}, 64)


def test_mpls_label_stacks() -> None:
    expected = [
        Expect(
            i,
            f"{host(v, 1)} {44000 + i}",
            f"{host(v, 2)} 80",
            9 * i + 1,
            9 * i + 9,
            9,
            (18, 19),
            "graceful",
        )
        for i, v in enumerate((4, 4, 6, 6))
    ]
    check("mpls_stacks.pcap", expected, {}, 36)


def test_ipv6_extension_headers() -> None:
    expected = [
        Expect(
            i, f"fd00::1 {45000 + i}", "fd00::2 80", 9 * i + 1, 9 * i + 9, 9, (18, 19), "graceful"
        )
        for i in range(4)
    ]
    check("ipv6_ext_headers.pcap", expected, {}, 36)


def test_tunnels() -> None:
    # IPv4 in IPv4, IPv6 in IPv4, GRE, GRE with Ethernet inside, VXLAN,
    # ERSPAN II, ERSPAN III, GENEVE.
    expected = [
        Expect(
            i,
            f"{host(6 if i == 1 else 4, 1)} {49000 + i}",
            f"{host(6 if i == 1 else 4, 2)} 80",
            9 * i + 1,
            9 * i + 9,
            9,
            (18, 19),
            "graceful",
        )
        for i in range(8)
    ]
    check("tunnels.pcap", expected, {}, 72)


def test_ip_fragments_are_decoded_in_the_frame_that_completes_them() -> None:
    # c0's SYN is whole in frame 2, its request in frame 7 (the fragments
    # came last first); c1's response is whole in frame 18. Frame 23 is a
    # fragment of a datagram that never completes.
    expected = [
        Expect(
            0, "10.0.0.1 46000", "10.0.0.2 80", 2, 12, 9, (18, 19), "graceful", T0 + MS + 0.0001
        ),
        Expect(1, "fd00::1 46001", "fd00::2 80", 13, 22, 9, (18, 19), "graceful"),
    ]
    check("ip_fragments.pcap", expected, {"ip_fragment": 4, "unreassembled_fragment": 1}, 23)


@pytest.mark.parametrize(("keep", "counted"), [(8, False), (16, True), (19, True)])
def test_tcp_header_cut_by_the_snap_length(keep: int, counted: bool) -> None:
    # The request (frame 4) keeps `keep` bytes of its TCP header. Wireshark
    # files it under the stream from 16 bytes on (ports, numbers, flags,
    # window); with fewer it is no TCP segment.
    packets = 9 if counted else 8
    skipped = {} if counted else {"truncated_tcp_header": 1}
    expected = [Expect(0, "10.0.0.1 47000", "10.0.0.2 80", 1, 9, packets)]
    conns, _ = check(f"snaplen_tcp{keep}.pcap", expected, skipped, 9)
    # The response is whole: the server's 19 bytes are counted either way.
    assert conns[0]["payload_bytes"]["server"] == 19


def test_icmp_errors_quoting_tcp_join_the_quoted_stream() -> None:
    # Frame 2 quotes the whole SYN, frame 4 only 8 bytes of TCP (no stream
    # for Wireshark); 6 and 9 are ICMPv6 errors (9's SYN is behind a
    # destination options header), 7 quotes a 4-tuple seen nowhere else;
    # 8 is an echo request and 10 quotes a first fragment: not TCP.
    expected = [
        Expect(0, "10.0.0.1 48000", "10.0.0.2 80", 1, 3, 3, (0, 0), "attempt"),
        Expect(1, "fd00::1 48001", "fd00::2 80", 5, 6, 2, (0, 0), "attempt"),
        Expect(2, "10.0.0.9 48002", "10.0.0.2 22", 7, 7, 1),
        Expect(3, "fd00::1 48003", "fd00::2 80", 9, 9, 1),
    ]
    check("icmp_errors.pcap", expected, {"not_tcp": 3}, 10)


def test_every_capture_in_formats_has_a_test_here() -> None:
    named = {p[0] for p in PAIRS} | {
        "pcap_le_nsec.pcap",
        "pcap_be_nsec.pcap",
        "pcapng_sections.pcapng",
        "pcapng_linktypes.pcapng",
        "pcapng_tsresol.pcapng",
        "pcapng_blocks.pcapng",
        "pcapng_record_blocks.pcapng",
        "vlan_stacks.pcap",
        "mpls_stacks.pcap",
        "ipv6_ext_headers.pcap",
        "tunnels.pcap",
        "ip_fragments.pcap",
        "snaplen_tcp8.pcap",
        "snaplen_tcp16.pcap",
        "snaplen_tcp19.pcap",
        "icmp_errors.pcap",
    }
    # The ring buffer is tests/test_multifile.py's.
    present = {p.name for p in FORMATS.iterdir() if p.is_file()}
    assert present == named


def test_json_document_alike_on_every_kind_of_text_stream(tmp_path: Path) -> None:
    # The summary goes straight to a UTF-8 stream's bytes, else through str:
    # the document must read the same either way, a non-ASCII name included.
    import io
    import json
    import shutil

    from fintrace.cli import Progress, render
    from fintrace.render.jsonout import JsonRenderer

    src = tmp_path / "capturé.pcap"
    shutil.copy(CAPTURES / "demo.pcap", src)
    texts = []
    for make in (
        io.StringIO,
        lambda: io.TextIOWrapper(io.BytesIO(), encoding="utf-8"),
        lambda: io.TextIOWrapper(io.BytesIO(), encoding="utf-16"),
    ):
        out = make()
        run = analyze(AnalyzeOptions(paths=(str(src),)))
        render(run, JsonRenderer(out), lambda c: True, Progress(False))
        if isinstance(out, io.TextIOWrapper):
            out.flush()
            raw = out.buffer.getvalue()  # type: ignore[attr-defined]
            texts.append(raw.decode(out.encoding))
        else:
            texts.append(out.getvalue())
    assert texts[0] == texts[1] == texts[2]
    doc = json.loads(texts[0])
    assert doc["captures"][0]["file"] == str(src)
    assert doc["summary"]["connections"] == len(doc["connections"]) == 6


def test_streamed_summary_is_byte_for_byte_orjsons() -> None:
    # The document streams the summary (its per-client lists item by item):
    # the bytes must be those orjson gives the whole summary, on every capture.
    import orjson

    from fintrace.render.jsonout import stream_json

    from conftest import capture_files

    paths = [str(p) for p in capture_files()]
    run = analyze(AnalyzeOptions(paths=tuple(paths), separate=True))
    for _ in run.connections():
        pass
    whole = run.summary()
    assert whole["time_wait"]["by_tuple"] and whole["close_wait"]["by_service"]
    parts: list[bytes] = []
    stream_json(run.aggregator.summary(lazy=True), parts.append)
    assert b"".join(parts) == orjson.dumps(whole, option=orjson.OPT_NON_STR_KEYS)
