"""Several files on one command line: one continuous capture, or each on its own.

``captures/formats/ring/`` is a rotated ring buffer whose file names sort
differently from their times: ring_1.pcap (T0), ring_2.pcap (T0 + 10 s),
ring_0.pcap (T0 + 20 s). The expected values follow from
``captures/make_formats.py`` (``ring_buffer``); the per-file stream numbers
are Wireshark's when each file is opened on its own (first packet order).

    ring_1: 1-4 L (handshake, request)   5-13 R (graceful)   14-16 M (handshake)
    ring_2: 1 N SYN  2 L  3 L  4 N SYN+ACK  5 L  6 L  7 R2 SYN  8 N ACK  9 N RST
    ring_0: 1 R2 SYN again  2-5 L (FIN, ACK, FIN, ACK)  6 M (3 bytes)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fintrace.cli import main
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.render.jsonout import connection_dict

from conftest import CAPTURES

RING = CAPTURES / "formats" / "ring"
R0, R1, R2 = (str(RING / f"ring_{i}.pcap") for i in range(3))
T0 = 1_700_000_000.0

# (capture, stream): last capture, client, server port, first frame, last frame,
# packets, payload (client, server), close type, files[] spans
# (capture, stream, first frame, last frame, packets).
Row = tuple[
    str, str, int, int, int, int, tuple[int, int], str, list[tuple[str, int, int, int, int]]
]
ONE_RUN: dict[tuple[str, int], Row] = {
    # L: carried through all three files.
    (R1, 0): (
        R0,
        "10.0.0.1 50000",
        80,
        1,
        5,
        12,
        (22, 24),
        "graceful",
        [(R1, 0, 1, 4, 4), (R2, 1, 2, 6, 4), (R0, 1, 2, 5, 4)],
    ),
    (R1, 1): (R1, "10.0.0.1 50001", 443, 5, 13, 9, (18, 19), "graceful", [(R1, 1, 5, 13, 9)]),
    # M: quiet in ring_2, so no span there.
    (R1, 2): (
        R0,
        "10.0.0.5 50003",
        8080,
        14,
        6,
        4,
        (3, 0),
        "open",
        [(R1, 2, 14, 16, 3), (R0, 2, 6, 6, 1)],
    ),
    (R2, 0): (R2, "10.0.0.4 50002", 22, 1, 9, 4, (0, 0), "reset", [(R2, 0, 1, 9, 4)]),
    # R2: R's 4-tuple with a new ISN, so a new connection; its SYN is sent
    # again (same ISN) in ring_0.
    (R2, 2): (
        R0,
        "10.0.0.1 50001",
        443,
        7,
        1,
        2,
        (0, 0),
        "attempt",
        [(R2, 2, 7, 7, 1), (R0, 0, 1, 1, 1)],
    ),
}


def run(*paths: str, separate: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    r = analyze(AnalyzeOptions(paths=paths, separate=separate))
    conns = [connection_dict(c) for c in r.connections()]
    return conns, [c.file for c in r.captures]


def as_rows(conns: list[dict[str, Any]]) -> dict[tuple[str, int], Row]:
    return {
        (c["capture"], c["stream"]): (
            c["last_capture"],
            f"{c['client']['ip']} {c['client']['port']}",
            c["server"]["port"],
            c["first_frame"],
            c["last_frame"],
            c["packets"],
            (c["payload_bytes"]["client"], c["payload_bytes"]["server"]),
            c["close_type"],
            [
                (f["capture"], f["stream"], f["first_frame"], f["last_frame"], f["packets"])
                for f in c["files"]
            ],
        )
        for c in conns
    }


@pytest.mark.parametrize(
    "order", [(R0, R1, R2), (R2, R1, R0), (R1, R2, R0)], ids=["by-name", "reversed", "by-time"]
)
def test_files_are_one_capture_in_time_order_of_their_first_packets(
    order: tuple[str, str, str],
) -> None:
    conns, files = run(*order)
    assert files == [R1, R2, R0]
    assert as_rows(conns) == ONE_RUN


def test_carried_connections_keep_their_times_and_history() -> None:
    conns, _ = run(R0, R1, R2)
    by_key = {(c["capture"], c["stream"]): c for c in conns}
    lc = by_key[(R1, 0)]
    assert lc["first_ts"] == pytest.approx(T0 + 0.001)
    assert lc["last_ts"] == pytest.approx(T0 + 20.005)
    assert lc["roles_inferred"] is False  # its SYN was in the first file
    assert lc["end_state"] == {"client": "TIME_WAIT", "server": "CLOSED"}
    r2 = by_key[(R2, 2)]
    assert r2["reused_tuple"]["previous_stream"] == 1
    # R's last packet at T0 + 13 ms, R2's SYN at T0 + 10 s + 7 ms.
    assert r2["reused_tuple"]["gap_s"] == pytest.approx(9.994, abs=1e-6)


def test_separate_analyses_each_file_on_its_own() -> None:
    conns, files = run(R0, R1, R2, separate=True)
    assert files == [R0, R1, R2]  # as given: nothing is carried over
    got = {
        (c["capture"], c["stream"]): (
            c["first_frame"],
            c["last_frame"],
            c["packets"],
            c["roles_inferred"],
        )
        for c in conns
    }
    assert got == {
        (R0, 0): (1, 1, 1, False),  # R2's second SYN
        (R0, 1): (2, 5, 4, True),  # L's close, no SYN in this file
        (R0, 2): (6, 6, 1, True),  # M's data
        (R1, 0): (1, 4, 4, False),
        (R1, 1): (5, 13, 9, False),
        (R1, 2): (14, 16, 3, False),
        (R2, 0): (1, 9, 4, False),
        (R2, 1): (2, 6, 4, True),
        (R2, 2): (7, 7, 1, False),
    }
    for c in conns:
        assert c["last_capture"] == c["capture"]
        assert [f["capture"] for f in c["files"]] == [c["capture"]]


def test_an_empty_file_among_them_changes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    conns, files = run(R0, str(empty), R1, R2)
    assert files == [str(empty), R1, R2, R0]
    assert as_rows(conns) == ONE_RUN


def test_the_cli_reads_several_files_as_one_capture() -> None:
    result = CliRunner().invoke(main, ["analyze", "--format", "json", "-q", R0, R1, R2])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [c["file"] for c in doc["captures"]] == [R1, R2, R0]
    assert [c["packets"] for c in doc["captures"]] == [16, 9, 6]
    assert as_rows(doc["connections"]) == ONE_RUN


def test_the_cli_separate_flag() -> None:
    result = CliRunner().invoke(
        main, ["analyze", "--format", "jsonl", "-q", "--separate", R0, R1, R2]
    )
    assert result.exit_code == 0, result.output
    conns = [json.loads(line) for line in result.output.splitlines()]
    assert sorted((c["capture"], c["stream"]) for c in conns) == sorted(
        [(R0, 0), (R0, 1), (R0, 2), (R1, 0), (R1, 1), (R1, 2), (R2, 0), (R2, 1), (R2, 2)]
    )
