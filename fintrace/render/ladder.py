"""One connection as a ladder diagram: client on the left, server on the right.

Each segment is one arrow, labelled with its flags, relative sequence and
acknowledgement numbers (as Wireshark shows them: 0 for the SYN) and payload
length, with its frame number, the time since the previous segment, and
each side's state after it; a ``*`` marks a state that segment changed.
Then the verdict and why. Fits 80 columns for sequence numbers below a
million, and reads the same without colour.

By default only the close is drawn: from two segments before the first FIN
or RST to the end (a connection without either: its last segments).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from rich.padding import Padding
from rich.text import Text

from fintrace.decode import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG
from fintrace.evidence import flow_keys
from fintrace.findings import PHASES, duration, plural
from fintrace.model import CloseType, Role
from fintrace.render.table import STYLE, endpoint, when

if TYPE_CHECKING:
    from rich.console import Console

    from fintrace.model import Connection, State
    from fintrace.tracker import Tracker

_FLAGS: tuple[tuple[int, str], ...] = (
    (SYN, "SYN"),
    (FIN, "FIN"),
    (RST, "RST"),
    (PSH, "PSH"),
    (ACK, "ACK"),
    (URG, "URG"),
    (ECE, "ECE"),
    (CWR, "CWR"),
)
M32 = 0xFFFFFFFF
#: Segments shown before the first FIN or RST, for context (the data in flight).
CONTEXT = 2
#: A connection without FIN or RST: this many last segments.
TAIL = 10

FRAME_W, TIME_W, STATE_W, ARROW_W = 6, 8, 13, 35


class Row(NamedTuple):
    """One segment of the ladder."""

    frame: int
    ts: float
    from_client: bool
    seq: int
    ack: int | None
    flags: int
    plen: int
    client: State | None
    server: State | None


def rows(conn: Connection, trace: Tracker) -> list[Row]:
    """The traced segments of ``conn`` with relative numbers and per-role states."""
    if trace.trace is None:
        return []
    a_is_client = trace.a.key == flow_keys(conn)[0]
    out = []
    for frame, ts, h, seq, ack, flags, plen, _win, sa, sb in trace.trace:
        base = h.ws_base if h.ws_base >= 0 else seq
        peer_base = h.peer.ws_base if h.peer.ws_base >= 0 else ack
        out.append(
            Row(
                frame,
                ts,
                (h is trace.a) == a_is_client,
                (seq - base) & M32,
                (ack - peer_base) & M32 if flags & ACK else None,
                flags,
                plen,
                sa if a_is_client else sb,
                sb if a_is_client else sa,
            )
        )
    return out


def flag_names(flags: int) -> str:
    return " ".join(name for bit, name in _FLAGS if flags & bit) or "no flags"


def gap(seconds: float | None) -> str:
    """Time since the previous segment, in at most 8 characters."""
    if seconds is None:
        return ""
    if seconds < 0.01:
        return f"+{seconds * 1000:.2f}ms"
    if seconds < 1:
        return f"+{seconds * 1000:.0f}ms"
    if seconds < 100:
        return f"+{seconds:.2f}s"
    if seconds < 6000:
        return f"+{seconds / 60:.1f}min"
    return f"+{seconds / 3600:.1f}h"


def shown(all_rows: list[Row], *, everything: bool) -> tuple[int, int]:
    """(first, end) indexes of the rows drawn."""
    if everything:
        return 0, len(all_rows)
    for i, r in enumerate(all_rows):
        if r.flags & (FIN | RST):
            return max(0, i - CONTEXT), len(all_rows)
    return max(0, len(all_rows) - TAIL), len(all_rows)


def _arrow(r: Row) -> Text:
    """The arrow, ARROW_W wide (wider only for a label that does not fit)."""
    label = f"{flag_names(r.flags)} seq={r.seq}"
    if r.ack is not None:
        label += f" ack={r.ack}"
    label += f" len={r.plen}"
    line = "─" * max(ARROW_W - len(label) - 4, 1)
    style = "red" if r.flags & RST else "yellow" if r.flags & FIN else ""
    if r.from_client:
        return Text(label, style=style) + Text(f" {line}> ", style="dim")
    return Text(f" <{line} ", style="dim") + Text(label + " ", style=style)


def _state(state: State | None, changed: bool) -> Text:
    name = str(state) if state is not None else "-"
    return Text(
        (name + ("*" if changed else "")).ljust(STATE_W), style="bold" if changed else "dim"
    )


def render_ladder(
    console: Console, conn: Connection, all_rows: list[Row], *, everything: bool
) -> None:
    """The header, the arrows, and the verdict with its reasons."""
    head = Text(f"tcp.stream {conn.stream}", style="bold") + Text(f" in {conn.capture}: ")
    head += Text(conn.close_type.value, style=STYLE[conn.close_type])
    if conn.stuck:
        head += Text(" (stuck)", style="bold yellow")
    console.print(head)
    console.print(
        f"client {endpoint(conn.client.ip, conn.client.port)}  ⇄  "
        f"server {endpoint(conn.server.ip, conn.server.port)}"
        + ("  (roles inferred)" if conn.roles_inferred else "")
    )
    console.print(
        f"{plural(conn.packets, 'packet')}, frames {conn.first_frame}–{conn.last_frame}, "
        f"{when(conn.first_ts)} to {when(conn.last_ts)[11:]} UTC"
    )
    console.print()
    first, end = shown(all_rows, everything=everything)
    header = Text("frame".rjust(FRAME_W) + " " + "+time".rjust(TIME_W) + " ")
    header += Text("client".ljust(STATE_W) + " " + "".ljust(ARROW_W) + " " + "server")
    console.print(header, style="bold", soft_wrap=True)
    if first:
        r0, r1 = all_rows[0], all_rows[first - 1]
        console.print(
            Text(
                f"{'':>{FRAME_W}} {'':>{TIME_W}} ⋮ {plural(first, 'earlier segment')} "
                f"(frames {r0.frame}–{r1.frame}); --all shows them",
                style="dim",
            ),
            soft_wrap=True,
        )
    prev: Row | None = all_rows[first - 1] if first else None
    for r in all_rows[first:end]:
        line = Text(str(r.frame).rjust(FRAME_W) + " ")
        line += Text(gap(r.ts - prev.ts if prev else None).rjust(TIME_W) + " ", style="dim")
        line += _state(r.client, r.client is not (prev.client if prev else None))
        line += Text(" ") + _arrow(r)
        server = _state(r.server, r.server is not (prev.server if prev else None))
        server.rstrip()
        line += server
        console.print(line, soft_wrap=True)
        prev = r
    console.print(Text("* the segment changed this side's state", style="dim"))
    console.print()
    console.print(Text("Verdict: ", style="bold") + Text(conn.close_type.value, style="bold"))
    for reason in explain(conn):
        console.print(Padding(reason, (0, 0, 0, 2), expand=False))


def _side(conn: Connection, role: Role | str | None) -> str:
    if role == Role.CLIENT:
        return f"the client ({endpoint(conn.client.ip, conn.client.port)})"
    if role == Role.SERVER:
        return f"the server ({endpoint(conn.server.ip, conn.server.port)})"
    return "both sides"


def _other(role: Role | None) -> Role | None:
    return {Role.CLIENT: Role.SERVER, Role.SERVER: Role.CLIENT}.get(role) if role else None


def explain(conn: Connection) -> list[str]:
    """Why the connection got its close type, in sentences with frame numbers."""
    kind = conn.close_type
    active = conn.active_closer
    passive = _other(active)

    def fin(role: Role | None) -> str:
        frame = conn.fin_frames.client if role == Role.CLIENT else conn.fin_frames.server
        return f"frame {frame}" if frame else "frame ?"

    out: list[str] = []
    if kind is CloseType.REFUSED:
        out.append(
            f"{_side(conn, conn.reset_by).capitalize()} answered the SYN with RST (frame "
            f"{conn.rst_frame}): nothing listened on port {conn.server.port}, or a firewall "
            "rejected it."
        )
    elif kind is CloseType.RESET:
        phase = PHASES.get(str(conn.reset_phase), str(conn.reset_phase))
        sender = _side(conn, conn.reset_by).capitalize()
        out.append(f"{sender} sent RST in frame {conn.rst_frame}, {phase}.")
        if conn.rst_lost_bytes:
            out.append(
                f"{conn.rst_lost_bytes} bytes sent by {_side(conn, _other(conn.reset_by))} were "
                "never acknowledged before the RST: they were thrown away."
            )
        if conn.reset_phase == "established":
            out.append(
                "That is what SO_LINGER 0, a process that died, or a middlebox giving up "
                "on the connection look like."
            )
    elif kind is CloseType.SIMULTANEOUS:
        out.append(
            f"Both sides sent FIN before acknowledging the other's (client {fin(Role.CLIENT)}, "
            f"server {fin(Role.SERVER)}): a simultaneous close; both end in TIME_WAIT."
        )
    elif kind in (CloseType.GRACEFUL, CloseType.PIGGYBACKED, CloseType.HALF_CLOSE):
        out.append(f"{_side(conn, active).capitalize()} closed first: FIN in {fin(active)}.")
        if kind is CloseType.PIGGYBACKED:
            out.append(
                f"{_side(conn, passive).capitalize()} acknowledged it with its own FIN, "
                f"{fin(passive)}: a three-segment close."
            )
        elif kind is CloseType.HALF_CLOSE:
            out.append(
                f"{_side(conn, passive).capitalize()} acknowledged it and went on sending "
                f"{conn.half_close_bytes} bytes before its own FIN, {fin(passive)}: a half-close."
            )
        else:
            out.append(
                f"{_side(conn, passive).capitalize()} acknowledged it, then sent its own FIN "
                f"{duration(conn.close_wait_s or 0.0)} later, {fin(passive)}: a four-segment close."
            )
    elif kind is CloseType.CLOSE_WAIT:
        out.append(
            f"{_side(conn, active).capitalize()} closed first (FIN in {fin(active)}) and "
            f"{_side(conn, passive)} acknowledged it, but never sent its own FIN or a RST."
        )
        out.append(
            f"The {passive} sat in CLOSE_WAIT for {duration(conn.close_wait_s or 0.0)} until the "
            f"capture ended, the {active} in FIN_WAIT_2"
            + (
                "; the passive side was idle long enough to count as stuck: its application "
                "never closed the socket."
                if conn.stuck
                else "."
            )
        )
    elif kind is CloseType.UNACKED_FIN:
        out.append(
            f"{_side(conn, active).capitalize()} sent FIN in {fin(active)}; it was never "
            "acknowledged in the capture (peer gone or silent)."
        )
    elif kind is CloseType.OPEN:
        out.append("No FIN and no RST: the connection was still open when the capture ended.")
    else:
        out.append(
            f"The handshake never completed and nobody reset it ({plural(conn.packets, 'packet')})."
        )
    if conn.time_wait is not None:
        out.append(f"TIME_WAIT is held by {_side(conn, conn.time_wait)}.")
    if conn.final_ack_seen is False:
        out.append("The final ACK of the last FIN is not in the capture.")
    if conn.fin_retransmits:
        out.append(f"{plural(conn.fin_retransmits, 'FIN retransmission')}.")
    if conn.reused_tuple is not None:
        out.append(
            f"This 4-tuple carried tcp.stream {conn.reused_tuple.previous_stream} until "
            f"{duration(conn.reused_tuple.gap_s)} before this connection's first packet."
        )
    if conn.anomalies:
        out.append("Anomalies: " + ", ".join(conn.anomalies) + ".")
    return out
