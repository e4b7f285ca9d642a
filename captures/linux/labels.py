"""Labels: what the script did, plus what the kernel (ss) and the wire (tshark) showed.

Nothing here comes from fintrace. Each label says where each value came from:
``expect`` from the script's own actions (who closed, reset, sent how much),
``end_state`` from ``ss`` where ss still listed the socket (``end_state_from``
says ``ss``) and otherwise from what freed it, ``time_wait`` from ss, and the
piggyback question and the FIN count from the wire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from linux import wire
from linux.ss import parse as parse_ss

if TYPE_CHECKING:
    from linux.driver import Conn

SIDES = ("client", "server")
NO_PASSIVE_SIDE = ("simultaneous", "reset", "refused", "open")


class LabelError(RuntimeError):
    """The wire does not show what the script did: the recording is not usable."""


def _end_states(
    conn: Conn, ss_c: dict[Any, str], ss_s: dict[Any, str]
) -> tuple[dict[str, str], dict[str, str], dict[str, str | None]]:
    if conn.ss_before_reuse is not None:
        seen = conn.ss_before_reuse
        when = "ss just before the 4-tuple was reused"
    else:
        (cip, cport), (sip, sport) = conn.client, conn.server
        seen = {
            "client": ss_c.get((cip, cport, sip, sport)),
            "server": ss_s.get((sip, sport, cip, cport)),
        }
        when = "ss at the end of the capture"
    states, sources = {}, {}
    for side in SIDES:
        state = seen[side]
        states[side] = state if state is not None else conn.gone
        sources[side] = when if state is not None else f"not listed by ss: {conn.gone_why}"
    return states, sources, seen


def _ladder(segs: list[wire.Seg], conn: Conn) -> list[str]:
    """One line per segment: frame, direction, flags, relative seq/ack, payload length."""
    isn: dict[tuple[str, int], int] = {}
    for s in segs:
        if s.flags & wire.SYN:
            isn.setdefault((s.src, s.sport), s.seq)
    lines = []
    for s in segs:
        me = (s.src, s.sport)
        other = conn.server if me == conn.client else conn.client
        arrow = "c>s" if me == conn.client else "s>c"
        flags = "".join(
            n
            for bit, n in (
                (wire.SYN, "S"),
                (wire.FIN, "F"),
                (wire.RST, "R"),
                (0x08, "P"),
                (wire.ACK, "."),
            )
            if s.flags & bit
        )
        seq = (s.seq - isn.get(me, s.seq)) % 2**32
        ack = (s.ack - isn.get(other, s.ack)) % 2**32 if s.flags & wire.ACK else 0
        lines.append(f"{s.frame} {arrow} {flags} seq={seq} ack={ack} len={s.length}")
    return lines


def _streams(segs: list[wire.Seg]) -> dict[tuple[tuple[str, int], int], int]:
    """(client endpoint, incarnation) → tshark's tcp.stream."""
    out: dict[tuple[tuple[str, int], int], int] = {}
    seen: dict[tuple[str, int], int] = {}
    for stream, ss in sorted(wire.by_stream(segs).items()):
        client = wire.client_of(ss)
        n = seen.get(client, 0)
        seen[client] = n + 1
        out[(client, n)] = stream
    return out


def _frames(stream: list[wire.Seg], conn: Conn, end_ts: float) -> dict[str, Any]:
    """Where the connection lies in one capture file, as tshark numbers and times frames."""

    def first(side: tuple[str, int], flag: int) -> int | None:
        return next((s.frame for s in stream if s.flags & flag and (s.src, s.sport) == side), None)

    rsts = [s.frame for s in stream if s.flags & wire.RST]
    return {
        "first_frame": stream[0].frame,
        "last_frame": stream[-1].frame,
        "packets": len(stream),
        "fin_frames": {
            "client": first(conn.client, wire.FIN),
            "server": first(conn.server, wire.FIN),
        },
        "rst_frame": rsts[0] if rsts else None,
        # TEARDOWN.md defines it for a passive side only: not for a simultaneous close.
        "close_wait_s": None
        if conn.expect["close_type"] in NO_PASSIVE_SIDE
        else wire.close_wait_s(stream, end_ts),
    }


def build(
    conns: list[Conn], ss_client: str, ss_server: str, files: dict[str, wire.Capture]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The labels, and every place the kernel did not do what the script predicted.

    ``files`` maps each capture's name to its segments; the first is the reference.
    """
    ss_c, ss_s = parse_ss(ss_client), parse_ss(ss_server)
    segs = next(iter(files.values())).segs
    per_file = {name: wire.by_stream(cap.segs) for name, cap in files.items()}
    streams = wire.by_stream(segs)
    tshark_stream = _streams(segs)
    incarnations: dict[tuple[str, int], int] = {}
    labels, surprises = [], []
    for conn in conns:
        n = incarnations.get(conn.client, 0)
        incarnations[conn.client] = n + 1
        got = tshark_stream.get((conn.client, n))
        if got != conn.stream:
            raise LabelError(
                f"{conn.scenario} {conn.client}: script order says stream "
                f"{conn.stream}, tshark says {got}"
            )
        stream = streams[conn.stream]
        expect = dict(conn.expect)
        expect.setdefault("reused_previous_stream", None)
        if conn.fin_order_from_wire:
            piggy = wire.passive_fin_piggybacked(stream)
            if piggy is None:
                raise LabelError(f"{conn.scenario}: no acknowledged FIN on the wire")
            expect["close_type"] = "piggybacked" if piggy else "graceful"
        expect["fin_retransmits"] = sum(
            max(0, wire.fins_sent(stream, ep) - 1) for ep in (conn.client, conn.server)
        )
        states, sources, seen = _end_states(conn, ss_c, ss_s)
        tw = [side for side in SIDES if seen[side] == "TIME_WAIT"]
        expect["time_wait"] = "both" if len(tw) == 2 else (tw[0] if tw else None)
        for side in SIDES:
            if states[side] != conn.predict_end[side]:
                surprises.append(
                    f"{conn.scenario} (IPv{conn.family}) {side}: predicted "
                    f"{conn.predict_end[side]}, {sources[side]} says {states[side]}"
                )
        labels.append(
            {
                "stream": conn.stream,
                "scenario": conn.scenario,
                "ip_version": conn.family,
                "client": {"ip": conn.client[0], "port": conn.client[1]},
                "server": {"ip": conn.server[0], "port": conn.server[1]},
                "did": conn.did,
                "expect": expect,
                "end_state": states,
                "end_state_from": sources,
                "app_errors": conn.errors,
                "ss_during": conn.ss_during,
                "frames": {
                    name: _frames(streams_[conn.stream], conn, files[name].end_ts)
                    for name, streams_ in per_file.items()
                },
                "wire": _ladder(stream, conn),
            }
        )
    return labels, surprises
