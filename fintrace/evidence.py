"""Map connections back to the frames that carry them, for ``extract`` and ``annotate``.

:func:`frames_of` finds every frame of the given connections with a second
pass over the captures: a frame belongs to a connection when its TCP flow
key is one of the connection's two directions and its number lies within
the connection's first and last frame in that file. That is exact, because
fintrace (like Wireshark) never has two connections of one 4-tuple open at
once: a new stream on a 4-tuple takes every later packet of it, so the
frame ranges of one 4-tuple's streams never overlap. ICMP errors quoting a
connection's header count as its frames, as ``tcp.stream`` does in
Wireshark. Of a fragmented datagram only the frame that completes it is a
TCP frame (the other fragments carry no ``tcp.stream`` in Wireshark either).

:func:`state_comments` turns each connection's transitions into one line
per frame that changed a state: ``client FIN_WAIT_1 → FIN_WAIT_2, server
ESTABLISHED → CLOSE_WAIT``. A side that did not change is named with its
state; a side not seen yet is left out.
"""

from __future__ import annotations

import socket
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from fintrace.decode import DecodeStats, segments
from fintrace.model import Connection, Role, State
from fintrace.reader import CaptureFile
from fintrace.reassembly import Reassembler

if TYPE_CHECKING:
    from collections.abc import Iterable


def _raw(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def flow_keys(c: Connection) -> tuple[bytes, bytes]:
    """The decoder's flow keys of the connection's two directions (client's first)."""
    ci, si = _raw(c.client.ip), _raw(c.server.ip)
    cp, sp = c.client.port.to_bytes(2, "big"), c.server.port.to_bytes(2, "big")
    return ci + si + cp + sp, si + ci + sp + cp


def frames_of(connections: Iterable[Connection]) -> dict[str, set[int]]:
    """Per capture file, the frames of these connections (files with none are left out)."""
    wanted: defaultdict[str, defaultdict[bytes, list[tuple[int, int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for c in connections:
        keys = flow_keys(c)
        for span in c.files:
            for k in keys:
                wanted[span.capture][k].append((span.first_frame, span.last_frame))
    out: dict[str, set[int]] = {}
    for path, ranges in wanted.items():
        frames: set[int] = set()
        skipped: Counter[str] = Counter()
        with CaptureFile(path) as cap:
            for seg in segments(cap.records(), DecodeStats(skipped), Reassembler(skipped)):
                spans = ranges.get(seg[2])
                if spans is not None:
                    frame = seg[0]
                    if any(lo <= frame <= hi for lo, hi in spans):
                        frames.add(frame)
        out[path] = frames
    return out


def state_comments(connections: Iterable[Connection]) -> dict[int, str]:
    """Frame → what changed there, for every frame that moved a side's state."""
    out: dict[int, str] = {}
    for c in connections:
        state: dict[Role, State | None] = {Role.CLIENT: None, Role.SERVER: None}
        i = 0
        moves = c.transitions
        while i < len(moves):
            frame = moves[i].frame
            before = dict(state)
            path: dict[Role, list[State]] = {Role.CLIENT: [], Role.SERVER: []}
            while i < len(moves) and moves[i].frame == frame:
                path[moves[i].side].append(moves[i].state)
                state[moves[i].side] = moves[i].state
                i += 1
            parts = []
            for side in (Role.CLIENT, Role.SERVER):
                was = before[side]
                steps = ([str(was)] if was is not None else []) + [str(s) for s in path[side]]
                if path[side]:
                    parts.append(f"{side.value} " + " → ".join(steps))
                elif was is not None:
                    parts.append(f"{side.value} {was}")
            text = ", ".join(parts)
            out[frame] = f"{out[frame]}; {text}" if frame in out else text
    return out
