"""Table-driven tests of the taxonomy, one row per close type and variant.

Each row is a conversation written as segments (``c:`` the client sends,
``s:`` the server), fed straight into the flow table, and what
``../shared/TEARDOWN.md`` says about it, worked out by hand: the close type,
the active closer, who reset it and when, who holds TIME_WAIT, whether the
final ACK was seen, and each side's end state. The rows follow
``docs/taxonomy.md`` rule by rule, including the cases where rule order
decides. The second half drives ``fintrace analyze`` through click's
CliRunner: the table format's summary and every filter option.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fintrace.classify import classify, roles
from fintrace.cli import main
from fintrace.decode import ACK, FIN, PSH, RST, SYN, Segment
from fintrace.flowtable import FlowTable
from fintrace.tracker import Tracker

from conftest import CAPTURES

M32 = 0xFFFFFFFF
LETTERS = {"S": SYN, "A": ACK, "F": FIN, "R": RST, "P": PSH}
C_KEY = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack(">HH", 40000, 80)
S_KEY = bytes([10, 0, 0, 2, 10, 0, 0, 1]) + struct.pack(">HH", 80, 40000)


@dataclass
class Conv:
    """Segments with correct numbers, like captures/craft.py's Flow, as tuples."""

    isn: dict[str, int] = field(default_factory=lambda: {"c": 1000, "s": 5000})
    segments: list[Segment] = field(default_factory=list)
    t: float = 1_700_000_000.0

    def __post_init__(self) -> None:
        self.nxt = dict(self.isn)

    def send(self, step: str) -> None:
        """``c:FA``, ``s:PA+100`` (100 bytes), ``s:A@-1`` (ACK one below), ``c:F=`` (resend)."""
        who, spec = step.split(":")
        peer = "s" if who == "c" else "c"
        m = re.fullmatch(r"([SAFRP]+)(?:\+(\d+))?(?:@(-?\d+))?(=?)(?:\s*dt=([\d.]+))?", spec)
        assert m, step
        letters, plen_s, ack_off, again, dt = m.groups()
        flags = 0
        for ch in letters:
            flags |= LETTERS[ch]
        plen = int(plen_s or 0)
        span = plen + bool(flags & SYN) + bool(flags & FIN)
        seq = (self.nxt[who] - span) & M32 if again else self.nxt[who]
        ack = (self.nxt[peer] + int(ack_off or 0)) & M32 if flags & ACK else 0
        if not again:
            self.nxt[who] = (seq + span) & M32
        self.t += float(dt) if dt else 1.0
        key = C_KEY if who == "c" else S_KEY
        self.segments.append(
            (len(self.segments) + 1, self.t, key, seq, ack, flags, plen, 64240, -1)
        )


def run(steps: str, *, stuck_after: float = 60.0) -> tuple[Tracker, Any]:
    conv = Conv()
    for step in steps.split(","):
        conv.send(step.strip())
    table = FlowTable(linger=60.0)
    done = list(table.consume(conv.segments)) + table.finish()
    assert len(done) == 1
    t = done[0]
    return t, classify(t, end_ts=conv.t, stuck_after=stuck_after, r=roles(t))


OPEN = "c:S, s:SA, c:A, c:PA+100, s:PA+200"

# name: (segments, close_type, active_closer, reset_by, reset_phase, time_wait,
#        final_ack_seen, (client end state, server end state))
Row = tuple[
    str,
    str,
    str | None,
    str | None,
    str | None,
    str | None,
    bool | None,
    tuple[str | None, str | None],
]
# fmt: off
ROWS: dict[str, Row] = {
    # 1. refused
    "refused": ("c:S, s:RA",
        "refused", "server", "server", None, None, None, ("RESET", "RESET")),
    "refused after SYN retransmission": ("c:S, c:S=, s:RA",
        "refused", "server", "server", None, None, None, ("RESET", "RESET")),
    "RST without ACK is no answer to a SYN": ("c:S, s:R",
        "attempt", None, None, None, None, None, ("SYN_SENT", None)),
    "RST acknowledging the wrong number": ("c:S, s:RA@5",
        "attempt", None, None, None, None, None, ("SYN_SENT", None)),
    # 2. reset, each phase
    "reset in the handshake (half-open scan)": ("c:S, s:SA, c:R",
        "reset", "client", "client", "handshake", None, None, ("RESET", "RESET")),
    "reset established by the client": (OPEN + ", c:RA",
        "reset", "client", "client", "established", None, None, ("RESET", "RESET")),
    "reset established by the server": (OPEN + ", s:RA",
        "reset", "server", "server", "established", None, None, ("RESET", "RESET")),
    "reset while closing": (OPEN + ", c:FA, s:A, s:PA+10, c:R",
        "reset", "client", "client", "closing", None, None, ("RESET", "RESET")),
    "reset by the passive side while closing": (OPEN + ", c:FA, s:RA",
        "reset", "client", "server", "closing", None, None, ("RESET", "RESET")),
    "reset after both FINs were acknowledged": (OPEN + ", c:FA, s:FA, c:A, s:FA=, c:R",
        "reset", "client", "client", "closed", None, None, ("RESET", "RESET")),
    "FIN+RST is a reset, not a close": (OPEN + ", c:FRA",
        "reset", "client", "client", "established", None, None, ("RESET", "RESET")),
    "a RST beats a completed close (rule 2 before 6)": (OPEN + ", s:FA, c:A, c:FA, s:A, c:RA",
        "reset", "server", "client", "closed", None, None, ("RESET", "RESET")),
    "mid-stream reset": ("c:PA+10, s:RA",
        "reset", "server", "server", "established", None, None, ("RESET", "RESET")),
    # 3. simultaneous
    "simultaneous: the FINs cross": (OPEN + ", c:FA, s:FA@-1, c:A, s:A",
        "simultaneous", "both", None, None, "both", True, ("TIME_WAIT", "TIME_WAIT")),
    "simultaneous, final ACKs the other way round": (OPEN + ", c:FA, s:FA@-1, s:A, c:A",
        "simultaneous", "both", None, None, "both", True, ("TIME_WAIT", "TIME_WAIT")),
    "simultaneous, one final ACK missing": (OPEN + ", c:FA, s:FA@-1, c:A",
        "simultaneous", "both", None, None, None, False, ("CLOSING", "FIN_WAIT_2")),
    # 4. half_close
    "half close: data after the ACK of the FIN": (OPEN + ", c:FA, s:A, s:PA+50, c:A, s:FA, c:A",
        "half_close", "client", None, None, "client", True, ("TIME_WAIT", "CLOSED")),
    "half close beats piggybacked (data in the FIN+ACK)": (OPEN + ", c:FA, s:FPA+5, c:A",
        "half_close", "client", None, None, "client", True, ("TIME_WAIT", "CLOSED")),
    # 5. piggybacked
    "piggybacked, client first": (OPEN + ", c:FA, s:FA, c:A",
        "piggybacked", "client", None, None, "client", True, ("TIME_WAIT", "CLOSED")),
    "piggybacked, server first": (OPEN + ", s:FA, c:FA, s:A",
        "piggybacked", "server", None, None, "server", True, ("CLOSED", "TIME_WAIT")),
    # 6. graceful
    "graceful, client first": (OPEN + ", c:FA, s:A, s:FA, c:A",
        "graceful", "client", None, None, "client", True, ("TIME_WAIT", "CLOSED")),
    "graceful, server first": (OPEN + ", s:FA, c:A, c:FA, s:A",
        "graceful", "server", None, None, "server", True, ("CLOSED", "TIME_WAIT")),
    "graceful, final ACK never seen": (OPEN + ", c:FA, s:A, s:FA, s:FA=",
        "graceful", "client", None, None, None, False, ("FIN_WAIT_2", "LAST_ACK")),
    "graceful, FIN carrying data": (OPEN + ", c:FPA+3, s:A, s:FA, c:A",
        "graceful", "client", None, None, "client", True, ("TIME_WAIT", "CLOSED")),
    # 7. close_wait
    "close_wait": (OPEN + ", c:FA, s:A",
        "close_wait", "client", None, None, None, None, ("FIN_WAIT_2", "CLOSE_WAIT")),
    "close_wait, server closed first": (OPEN + ", s:FA, c:A",
        "close_wait", "server", None, None, None, None, ("CLOSE_WAIT", "FIN_WAIT_2")),
    # 8. unacked_fin
    "unacked FIN": (OPEN + ", c:FA, c:FA=",
        "unacked_fin", "client", None, None, None, None, ("FIN_WAIT_1", "ESTABLISHED")),
    "an ACK of the data only does not acknowledge the FIN": (OPEN + ", c:FPA+3, s:A@-1",
        "unacked_fin", "client", None, None, None, None, ("FIN_WAIT_1", "ESTABLISHED")),
    "SYN+FIN unanswered (rule 8 before 10)": ("c:SF",
        "unacked_fin", "client", None, None, None, None, ("FIN_WAIT_1", None)),
    # 9. open
    "open": (OPEN,
        "open", None, None, None, None, None, ("ESTABLISHED", "ESTABLISHED")),
    "open, seen mid-stream": ("c:PA+10, s:A",
        "open", None, None, None, None, None, ("ESTABLISHED", "ESTABLISHED")),
    # 10. attempt
    "attempt: SYN unanswered": ("c:S, c:S=, c:S=",
        "attempt", None, None, None, None, None, ("SYN_SENT", None)),
    "attempt: no third ACK": ("c:S, s:SA, s:SA=",
        "attempt", None, None, None, None, None, ("SYN_SENT", "SYN_RECEIVED")),
}
# fmt: on


@pytest.mark.parametrize("name", list(ROWS))
def test_taxonomy_row(name: str) -> None:
    steps, kind, closer, reset_by, phase, tw, final_ack, ends = ROWS[name]
    t, v = run(steps)
    r = roles(t)
    got = (
        v.close_type,
        v.active_closer,
        v.reset_by,
        v.reset_phase,
        v.time_wait,
        v.final_ack_seen,
        (r.client.state, r.server.state),
    )
    assert got == (kind, closer, reset_by, phase, tw, final_ack, ends)


def test_every_close_type_has_a_row() -> None:
    from fintrace.model import CloseType

    assert {row[1] for row in ROWS.values()} == {k.value for k in CloseType}


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (OPEN + ", c:FA, s:A, s:FA, c:A", 0),
        (OPEN + ", c:FA, c:FA=, s:A, s:FA, c:A", 1),
        (OPEN + ", c:FA, s:A, s:FA, s:FA=, s:FA=, c:A", 2),
        (OPEN + ", c:FA, c:FA=, s:FA, s:FA=, c:A", 2),
    ],
)
def test_fin_retransmits(steps: str, expected: int) -> None:
    assert run(steps)[1].fin_retransmits == expected


def test_close_wait_seconds_and_stuck() -> None:
    # ACK of the FIN at +7 s, the capture ends 100 s later (keep-alive at the end).
    steps = OPEN + ", c:FA, s:A, s:A dt=40, c:A dt=60"
    _, v = run(steps)
    assert v.close_type == "close_wait" and v.close_wait_s == pytest.approx(100.0)
    assert v.stuck  # the server's ACK at +40 s carries nothing new: still idle
    assert not run(steps, stuck_after=100.5)[1].stuck
    # New data from the passive side 10 s before the end: not idle long enough.
    _, busy = run(OPEN + ", c:FA, s:A, s:PA+5 dt=90, c:A dt=10")
    assert busy.close_wait_s == pytest.approx(100.0) and not busy.stuck


def test_close_wait_s_of_completed_closes() -> None:
    assert run(OPEN + ", c:FA, s:A, s:FA dt=2.5, c:A")[1].close_wait_s == pytest.approx(2.5)
    assert run(OPEN + ", c:FA, s:FA, c:A")[1].close_wait_s == 0.0
    assert run(OPEN + ", c:FA, s:FA@-1, c:A, s:A")[1].close_wait_s is None


def test_half_close_bytes_exclude_retransmissions() -> None:
    _, v = run(OPEN + ", c:FA, s:PA+30, s:PA+40, s:PA+40=, c:A, s:FA, c:A")
    assert (v.close_type, v.half_close_bytes) == ("half_close", 70)


def test_wrap_at_the_fin() -> None:
    conv = Conv(isn={"c": M32 - 1, "s": M32 - 3})
    for step in ["c:S", " s:SA", " c:A", " c:FA", " s:A", " s:FA", " c:A"]:
        conv.send(step.strip())
    # The client's FIN is at 0xFFFFFFFF, the server's at 0xFFFFFFFD.
    assert conv.segments[3][3] == M32 and conv.segments[4][4] == 0
    table = FlowTable()
    t = (list(table.consume(conv.segments)) + table.finish())[0]
    v = classify(t, end_ts=conv.t, stuck_after=60.0)
    assert (v.close_type, v.time_wait, v.final_ack_seen) == ("graceful", "client", True)


# -- the command line: table summary and filters ------------------------------------------

CLOSES = CAPTURES / "closes"
FILES = [
    "graceful_client_first",
    "graceful_server_first",
    "refused",
    "close_wait_stuck",
    "close_wait_recent",
    "reused_tuple_in_time_wait",
    "open_ipv6",
]


def jsonl(*options: str, files: list[str] = FILES) -> set[tuple[str, int]]:
    paths = [str(CLOSES / f"{f}.pcap") for f in files]
    result = CliRunner().invoke(
        main, ["analyze", "--format", "jsonl", "-q", "--separate", *options, *paths]
    )
    assert result.exit_code == 0, result.output
    conns = [json.loads(line) for line in result.output.splitlines()]
    return {(Path(c["capture"]).name.removesuffix(".pcap"), c["stream"]) for c in conns}


ALL = {(f, 0) for f in FILES} | {("reused_tuple_in_time_wait", 1)}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), ALL),
        (
            ("--close-type", "graceful"),
            {
                ("graceful_client_first", 0),
                ("graceful_server_first", 0),
                ("reused_tuple_in_time_wait", 0),
            },
        ),
        (
            ("--close-type", "close_wait", "--close-type", "refused"),
            {("close_wait_stuck", 0), ("close_wait_recent", 0), ("refused", 0)},
        ),
        (("--stuck",), {("close_wait_stuck", 0)}),
        # close_wait_stuck: idle 152 s; close_wait_recent: idle 10 s.
        (("--stuck", "--stuck-after", "200"), set()),
        (("--stuck", "--stuck-after", "10"), {("close_wait_stuck", 0), ("close_wait_recent", 0)}),
        (("--port", "5432"), {("close_wait_stuck", 0), ("close_wait_recent", 0)}),
        (("--port", "41042"), {("reused_tuple_in_time_wait", 0), ("reused_tuple_in_time_wait", 1)}),
        (("--port", "81", "--port", "41001"), {("refused", 0), ("graceful_client_first", 0)}),
        (("--host", "2001:db8::/32"), {("open_ipv6", 0)}),
        (("--host", "10.0.0.2"), ALL - {("open_ipv6", 0)}),
        (("--stream", "1"), {("reused_tuple_in_time_wait", 1)}),
        (("--close-type", "piggybacked", "--stream", "1"), {("reused_tuple_in_time_wait", 1)}),
        (("--close-type", "piggybacked", "--stream", "0"), set()),
    ],
)
def test_filters(options: tuple[str, ...], expected: set[tuple[str, int]]) -> None:
    assert jsonl(*options) == expected


def table(*options: str, files: list[str]) -> str:
    paths = [str(CLOSES / f"{f}.pcap") for f in files]
    result = CliRunner().invoke(
        main, ["analyze", "--format", "table", "-q", "--no-color", "--separate", *options, *paths]
    )
    assert result.exit_code == 0, result.output
    return result.output


def row(text: str, *cells: str) -> bool:
    """A table line holding these cells in this order."""
    pattern = r"\s*[│|]\s*".join(re.escape(c) for c in cells)
    return re.search(r"^\s*" + pattern + r"(\s|[│|]|$)", text, re.M) is not None


def test_table_summary() -> None:
    # Four connections: two graceful (closed first by the client, by the
    # server), one refused (the server's RST), one close_wait (client first).
    out = table(
        files=["graceful_client_first", "graceful_server_first", "refused", "close_wait_stuck"]
    )
    assert row(out, "graceful", "2", "50.0%")
    assert row(out, "refused", "1", "25.0%")
    assert row(out, "close_wait", "1", "25.0%")
    assert not row(out, "piggybacked", "0")
    assert "client 2 (50.0%), server 2 (50.0%)" in out
    # TIME_WAIT: the client's in graceful_client_first, the server's in graceful_server_first.
    assert re.search(r"client's in 1, the server's in 1", out)
    # The connection list: one row per connection, with its stream number.
    assert len(re.findall(r"│\s+0\s+│\s+10\.0\.0\.1:410\d\d", out)) == 4


def test_table_rows_follow_the_filters() -> None:
    out = table("--close-type", "graceful", files=["graceful_client_first", "refused"])
    assert "10.0.0.1:41001" in out and "10.0.0.1:41016" not in out
    assert row(out, "refused", "1", "50.0%")  # the summary still covers everything


def test_msl_sets_the_time_wait_window() -> None:
    # Stream 0 enters TIME_WAIT at T0+9, stream 1 (the reused 4-tuple, 5 s
    # later) at T0+19. With 2 x MSL = 60 s both are held at once and the
    # reuse is inside the window; with 2 x MSL = 4 s neither.
    def summary(*options: str) -> dict[str, Any]:
        result = CliRunner().invoke(
            main,
            [
                "analyze",
                "--format",
                "json",
                "-q",
                *options,
                str(CLOSES / "reused_tuple_in_time_wait.pcap"),
            ],
        )
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.output)["summary"]["time_wait"])

    default = summary()
    assert default["window_s"] == 60.0
    assert default["by_host"][0]["peak"] == 2
    assert default["reused_within_2msl"]["count"] == 1
    short = summary("--msl", "2")
    assert short["window_s"] == 4.0
    assert short["by_host"][0]["peak"] == 1
    assert short["reused_within_2msl"]["count"] == 0
    text = table("--msl", "2", files=["reused_tuple_in_time_wait"])
    assert "2×MSL = 4 s" in text


def test_bytes_of_a_side_first_seen_without_data_are_counted() -> None:
    # Mid-stream, each side's first segment a bare ACK; the client's data
    # then takes the flow table's fast path. Its sequence numbers are above
    # 2^31, so the tracker must have set where its sequence space starts.
    conv = Conv(isn={"c": 0x9000_0000, "s": 0x1000})
    for step in ("c:A", "s:A", "c:PA+100", "s:PA+7", "c:A"):
        conv.send(step)
    table = FlowTable()
    t = (list(table.consume(conv.segments)) + table.finish())[0]
    r = roles(t)
    assert (r.client.bytes, r.server.bytes) == (100, 7)
