"""Driving both ends of a connection from one thread, and what the script writes down.

Each scenario makes one or two connections between the client and server
namespaces and writes down what it did and what it expects from that: who
closed first, who reset, how many bytes each side sent. What only the kernel
can say (end states, TIME_WAIT, whether an ACK rode on a FIN) is read later
from ``ss`` and from the wire; see ``labels.py``.

One thread drives both ends, so the order of events is the order of the
calls: a segment sent over the veth pair is processed by the peer's stack
before the sending call returns.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from linux import netns
from linux.ss import parse as parse_ss

if TYPE_CHECKING:
    from collections.abc import Callable

    from linux.netns import Lab

#: Longer than Linux's delayed-ACK time (40 ms at these RTTs, 200 ms at most
#: for any RTT): the passive side's ACK of the FIN goes out on its own first.
PASSIVE_DELAY_S = 0.25
#: Lets the peer's delayed ACKs go out before the next step.
SETTLE_S = 0.06
REQUEST = b"GET /fin HTTP/1.0\r\n\r\n"
RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
CHUNK = b"x" * 700
CHUNKS = 3


@dataclass(slots=True)
class Conn:
    """One connection the script made, with what the script knows about it."""

    scenario: str
    family: int
    client: tuple[str, int]
    server: tuple[str, int]
    stream: int
    did: list[str] = field(default_factory=list)
    #: close_type etc. as the script's actions determine them (TEARDOWN.md names).
    expect: dict[str, Any] = field(default_factory=dict)
    #: End states the script expects, by the contract's rules; compared with ss.
    predict_end: dict[str, str] = field(default_factory=dict)
    #: The state of a side whose socket ss no longer lists, and why.
    gone: str = "CLOSED"
    gone_why: str = ""
    #: ss seen for this 4-tuple before a later connection took the 4-tuple over.
    ss_before_reuse: dict[str, str | None] | None = None
    #: ss taken in the middle of the scenario: each side's state and the
    #: wall-clock window (the capture's clock) in which ss looked.
    ss_during: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The close type follows the wire: piggybacked if the passive side's
    #: first ACK of the active FIN carries its own FIN, else graceful.
    fin_order_from_wire: bool = False
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Ctx:
    """The state of one run of every scenario over one address family."""

    lab: Lab
    family: int
    conns: list[Conn]
    #: Sockets left open until the capture has ended.
    held: list[socket.socket]
    index: int = 0

    @property
    def version(self) -> int:
        return 4 if self.family == socket.AF_INET else 6

    def ports(self) -> tuple[int, int]:
        """(client port, server port) of the current scenario: one pair per scenario."""
        base = 0 if self.family == socket.AF_INET else 100
        return 40000 + base + self.index, 5000 + base + self.index

    def endpoints(self) -> tuple[tuple[str, int], tuple[str, int]]:
        cport, sport = self.ports()
        return (
            (self.lab.client.addr(self.family), cport),
            (self.lab.server.addr(self.family), sport),
        )

    def listen(self) -> socket.socket:
        s = self.lab.socket(self.lab.server, self.family)
        s.bind(self.endpoints()[1])
        s.listen(8)
        return s

    def new_conn(self, scenario: str) -> Conn:
        client, server = self.endpoints()
        conn = Conn(scenario, self.version, client, server, stream=len(self.conns))
        self.conns.append(conn)
        return conn

    def dial(
        self, listener: socket.socket, scenario: str, *, reuse: bool = False
    ) -> tuple[Conn, socket.socket, socket.socket]:
        c = self.lab.socket(self.lab.client, self.family)
        if reuse:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client, server = self.endpoints()
        c.bind(client)
        conn = self.new_conn(scenario)
        c.connect(server)
        s, _ = listener.accept()
        s.settimeout(netns.TIMEOUT_S)
        return conn, c, s

    def ss_pair(self, conn: Conn) -> dict[str, str | None]:
        """What ss says about ``conn``'s 4-tuple now, on each side (None: not listed)."""
        (cip, cport), (sip, sport) = conn.client, conn.server
        cs = parse_ss(self.lab.ss(self.lab.client)).get((cip, cport, sip, sport))
        ss_ = parse_ss(self.lab.ss(self.lab.server)).get((sip, sport, cip, cport))
        return {"client": cs, "server": ss_}

    def look(self, conn: Conn, moment: str) -> None:
        """Write down what ss says about ``conn`` now, and when that was."""
        before = time.time()
        states: dict[str, Any] = self.ss_pair(conn)
        states["at"] = [round(before, 6), round(time.time(), 6)]
        conn.ss_during[moment] = states

    def wait_ss(
        self, conn: Conn, done: Callable[[dict[str, str | None]], bool]
    ) -> dict[str, str | None]:
        deadline = time.monotonic() + netns.TIMEOUT_S
        while True:
            now = self.ss_pair(conn)
            if done(now):
                return now
            if time.monotonic() > deadline:
                raise netns.LabError(f"{conn.scenario}: ss stuck at {now}")
            time.sleep(0.02)


def read_to_eof(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def read_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise netns.LabError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def abort(s: socket.socket) -> None:
    """close() with SO_LINGER {on, 0}: the kernel sends RST instead of FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def reset_seen(s: socket.socket) -> str:
    """The error the kernel holds for the application: proof a RST arrived.

    Read through SO_ERROR, without I/O: after a FIN a read returns EOF before
    any error, and a write could put new data on the wire.
    """
    with s:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err not in (errno.ECONNRESET, errno.EPIPE):
        raise netns.LabError(f"expected a reset, SO_ERROR is {err}")
    return f"SO_ERROR {errno.errorcode[err]}"


def exchange(c: socket.socket, s: socket.socket) -> None:
    """One request and one response, all read: nothing left unread on either side."""
    c.sendall(REQUEST)
    read_exact(s, len(REQUEST))
    s.sendall(RESPONSE)
    read_exact(c, len(RESPONSE))


def both(client: int, server: int) -> dict[str, int]:
    return {"client": client, "server": server}


def closed(
    *,
    closer: str,
    close_type: str = "graceful",
    pay: dict[str, int] | None = None,
    half_close_bytes: int = 0,
) -> dict[str, Any]:
    return {
        "close_type": close_type,
        "active_closer": closer,
        "reset_by": None,
        "reset_phase": None,
        "payload_bytes": pay or both(len(REQUEST), len(RESPONSE)),
        "half_close_bytes": half_close_bytes,
        "final_ack_seen": True,
    }


def reset(
    *, by: str, phase: str | None, pay: dict[str, int], close_type: str = "reset"
) -> dict[str, Any]:
    return {
        "close_type": close_type,
        "active_closer": by,
        "reset_by": by,
        "reset_phase": phase,
        "payload_bytes": pay,
        "half_close_bytes": 0,
        "final_ack_seen": None,
    }


PASSIVE_GONE = "the passive side's socket is freed once its FIN is acknowledged"
RESET_GONE = "a RST frees the sockets of both sides"
