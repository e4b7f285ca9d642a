"""Build ``captures/demo.pcap``: a few connections that end in different ways.

Deterministic (fixed addresses, sequence numbers and timestamps); run from
the repository root: ``python captures/make_demo.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from craft import T0, Flow, merge, write_pcap  # noqa: E402

HERE = Path(__file__).parent


def build() -> list:
    flows = []
    # 0: graceful close started by the client (4 segments).
    f = Flow(client=("10.0.0.1", 41000), server=("10.0.0.10", 80), t=T0)
    f.c("S"); f.s("SA"); f.c("A")
    f.c("PA", b"GET / HTTP/1.1\r\n\r\n"); f.s("PA", b"HTTP/1.1 200 OK\r\n\r\nhi")
    f.c("FA"); f.s("A"); f.s("FA", dt=0.050); f.c("A")
    flows.append(f.packets)
    # 1: piggybacked close started by the server.
    f = Flow(client=("10.0.0.2", 41001), server=("10.0.0.10", 80), t=T0 + 0.5)
    f.c("S"); f.s("SA"); f.c("A"); f.c("PA", b"ping"); f.s("PA", b"pong")
    f.s("FA"); f.c("FA"); f.s("A")
    flows.append(f.packets)
    # 2: refused: the port is closed.
    f = Flow(client=("10.0.0.3", 41002), server=("10.0.0.10", 81), t=T0 + 1.0)
    f.c("S"); f.s("RA", seq=0)
    flows.append(f.packets)
    # 3: the client aborts with data in flight: RST while the server's data is unacknowledged.
    f = Flow(client=("10.0.0.4", 41003), server=("10.0.0.10", 80), t=T0 + 1.5)
    f.c("S"); f.s("SA"); f.c("A"); f.c("PA", b"upload"); f.s("PA", b"x" * 1000)
    f.c("RA", ack=f.server_nxt - 1000)
    flows.append(f.packets)
    # 4: the server never closes its side: CLOSE_WAIT, stuck for 90 s.
    f = Flow(client=("10.0.0.5", 41004), server=("10.0.0.11", 5432), t=T0 + 2.0)
    f.c("S"); f.s("SA"); f.c("A"); f.c("PA", b"query"); f.s("PA", b"rows")
    f.c("FA"); f.s("A")
    f.c("A", dt=90.0)  # a keep-alive from the client long after
    flows.append(f.packets)
    # 5: an unanswered SYN (and its retransmission).
    f = Flow(client=("10.0.0.6", 41005), server=("10.0.0.12", 443), t=T0 + 3.0)
    f.c("S"); f.c("S", seq=1000, dt=1.0)
    flows.append(f.packets)
    return merge(*flows)


if __name__ == "__main__":
    write_pcap(str(HERE / "demo.pcap"), build())
    print("wrote", HERE / "demo.pcap")
