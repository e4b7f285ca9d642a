"""The kernel's own view: ``ss -tanoi`` output, read into the contract's state names."""

from __future__ import annotations

#: ss's names (iproute2 ``sstate_name``) → TEARDOWN.md's. ``UNCONN`` is a
#: closed socket still held by its application.
SS_STATES = {
    "ESTAB": "ESTABLISHED",
    "SYN-SENT": "SYN_SENT",
    "SYN-RECV": "SYN_RECEIVED",
    "FIN-WAIT-1": "FIN_WAIT_1",
    "FIN-WAIT-2": "FIN_WAIT_2",
    "TIME-WAIT": "TIME_WAIT",
    "UNCONN": "CLOSED",
    "CLOSE-WAIT": "CLOSE_WAIT",
    "LAST-ACK": "LAST_ACK",
    "LISTEN": "LISTEN",
    "CLOSING": "CLOSING",
}

#: (local ip, local port, peer ip, peer port)
Key = tuple[str, int, str, int]


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port) if port != "*" else 0


def parse(text: str) -> dict[Key, str]:
    """Socket → contract state name, for every socket line of ``ss -tanoi``.

    ``-i`` adds an indented line of TCP info under each socket; only the
    socket lines (starting with a state name) are read.
    """
    states: dict[Key, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or line[0].isspace() or parts[0] not in SS_STATES:
            continue
        local, peer = _endpoint(parts[3]), _endpoint(parts[4])
        states[(local[0], local[1], peer[0], peer[1])] = SS_STATES[parts[0]]
    return states
