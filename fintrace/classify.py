"""Decide how a connection ended, from what the tracker recorded.

:func:`classify` is a pure function of a finished
:class:`~fintrace.tracker.Tracker`: it reads, never writes, and applies the
rules of ``../shared/TEARDOWN.md`` in order, the first match winning:

1. ``refused``      never established, and an acceptable RST answered the SYN
2. ``reset``        a RST ended it (``reset_phase``: handshake, established,
                    closing, closed)
3. ``simultaneous`` both sent a FIN, each before acknowledging the other's
4. ``half_close``   the passive side sent new payload in or after the segment
                    that acknowledged the active FIN
5. ``piggybacked``  the passive side's first acknowledgement of the active FIN
                    is its own FIN
6. ``graceful``     the passive side acknowledged, then sent its FIN
7. ``close_wait``   one FIN acknowledged, the other side never closed
8. ``unacked_fin``  a FIN never acknowledged
9. ``open``         established, no FIN, no RST
10. ``attempt``     never established, no RST
"""

from __future__ import annotations

from typing import ClassVar, Final

from mypy_extensions import mypyc_attr

from fintrace.decode import ACK
from fintrace.model import CloseType, Record, ResetPhase, Role, State
from fintrace.tracker import Half, Tracker


class Roles:
    """Which side is the client; ``inferred`` when no SYN or SYN+ACK said so."""

    def __init__(self, client: Half, server: Half, inferred: bool) -> None:
        self.client = client
        self.server = server
        self.inferred = inferred

    def of(self, half: Half | None) -> Role | None:
        if half is None:
            return None
        return Role.CLIENT if half is self.client else Role.SERVER


@mypyc_attr(acyclic=True)
class Verdict(Record):
    """How the connection closed, as TEARDOWN.md's fields say it.

    A record like :mod:`fintrace.model`'s (equality, hash and repr from
    :attr:`FIELDS`), made as they are by a direct C call when compiled. It
    holds only enums and numbers: *acyclic*, outside the cycle collector.
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "close_type",
        "active_closer",
        "reset_by",
        "reset_phase",
        "time_wait",
        "half_close_bytes",
        "close_wait_s",
        "stuck",
        "final_ack_seen",
        "fin_retransmits",
        "one_sided",
    )

    def __init__(
        self,
        close_type: CloseType,
        active_closer: Role | None,
        reset_by: Role | None,
        reset_phase: ResetPhase | None,
        time_wait: Role | None,
        half_close_bytes: int,
        close_wait_s: float | None,
        stuck: bool,
        final_ack_seen: bool | None,
        fin_retransmits: int,
        one_sided: bool,
    ) -> None:
        self.close_type = close_type
        self.active_closer = active_closer
        self.reset_by = reset_by
        self.reset_phase = reset_phase
        self.time_wait = time_wait
        self.half_close_bytes = half_close_bytes
        self.close_wait_s = close_wait_s
        self.stuck = stuck
        self.final_ack_seen = final_ack_seen
        self.fin_retransmits = fin_retransmits
        self.one_sided = one_sided


def port_of(half: Half) -> int:
    key = half.key
    i = 8 if len(key) == 12 else 32
    return (key[i] << 8) | key[i + 1]


def roles(conn: Tracker) -> Roles:
    """Client and server as TEARDOWN.md defines them."""
    a, b = conn.a, conn.b
    if a.syn_frame or b.syn_frame:
        if a.syn_frame and b.syn_frame:
            # Simultaneous open: the earlier SYN is the client's.
            first = a if a.syn_at <= b.syn_at else b
            return Roles(first, first.peer, False)
        client = a if a.syn_frame else b
        return Roles(client, client.peer, False)
    if a.synack_frame or b.synack_frame:
        server = a if a.synack_frame else b
        return Roles(server.peer, server, False)
    pa, pb = port_of(a), port_of(b)
    if pb < pa:
        return Roles(a, b, True)
    if pa < pb:
        return Roles(b, a, True)
    return Roles(a, b, True)


def classify(
    conn: Tracker, *, end_ts: float, stuck_after: float, r: Roles | None = None
) -> Verdict:
    """The close type and its details; ``end_ts`` is when the capture ended."""
    if r is None:
        r = roles(conn)
    a, b = conn.a, conn.b
    # Only one direction captured: one side sent nothing although the other
    # acknowledged something of it. A SYN nobody answered is not one-sided:
    # nothing shows the peer ever spoke.
    one_sided = (a.packets == 0 and bool(b.flags_seen & ACK)) or (
        b.packets == 0 and bool(a.flags_seen & ACK)
    )
    fin_retx = max(0, a.fin_count - 1) + max(0, b.fin_count - 1)
    active = conn.first_fin
    passive = active.peer if active is not None else None
    half_close_bytes = passive.half_close_bytes if passive is not None else 0
    time_wait = _holders(r, State.TIME_WAIT)

    v = Verdict(
        CloseType.ATTEMPT,
        None,
        None,
        None,
        time_wait,
        half_close_bytes,
        None,
        False,
        None,
        fin_retx,
        one_sided,
    )
    rst = conn.rst_from
    if rst is not None:
        v.close_type = CloseType.RESET
        v.active_closer = r.of(active or rst)
        v.reset_by = r.of(rst)
        if not conn.established:
            peer = rst.peer
            if peer.syn_frame and not rst.synack_frame and not rst.syn_frame:
                v.close_type = CloseType.REFUSED
                v.active_closer = v.reset_by
            else:
                v.reset_phase = ResetPhase.HANDSHAKE
        else:
            v.reset_phase = _RESET_PHASES[conn.rst_phase]
        return v

    if active is not None and passive is not None and passive.fin_seq >= 0:
        final_ack = bool(a.fin_acked_frame and b.fin_acked_frame)
        # Rule 3: the passive side's FIN went out before it had acknowledged
        # the active FIN (an acknowledgement in the FIN segment itself
        # counts as before the FIN).
        v.final_ack_seen = final_ack
        if not passive.acked_fin_at or passive.acked_fin_at > passive.fin_at:
            v.close_type = CloseType.SIMULTANEOUS
            v.active_closer = Role.BOTH
            return v
        wait = passive.fin_ts - passive.acked_fin_ts
        if passive.half_close_bytes > 0:
            v.close_type = CloseType.HALF_CLOSE
        elif passive.acked_fin_at == passive.fin_at:
            v.close_type = CloseType.PIGGYBACKED
        else:
            v.close_type = CloseType.GRACEFUL
        v.active_closer = r.of(active)
        v.close_wait_s = max(wait, 0.0)
        return v

    if active is not None and passive is not None:
        v.active_closer = r.of(active)
        if active.fin_acked_frame:
            v.close_type = CloseType.CLOSE_WAIT
            v.close_wait_s = max(end_ts - passive.acked_fin_ts, 0.0)
            # Idle: no new payload since. Keep-alives and ACKs are the
            # kernel's, not the application's: they do not count.
            idle = end_ts - max(passive.acked_fin_ts, passive.data_ts)
            v.stuck = idle >= stuck_after
        else:
            v.close_type = CloseType.UNACKED_FIN
        return v
    if conn.established:
        v.close_type = CloseType.OPEN
    return v


_RESET_PHASES: Final = {p.value: p for p in ResetPhase}


def _holders(r: Roles, state: State) -> Role | None:
    c = r.client.state is state
    s = r.server.state is state
    if c and s:
        return Role.BOTH
    if c:
        return Role.CLIENT
    if s:
        return Role.SERVER
    return None
