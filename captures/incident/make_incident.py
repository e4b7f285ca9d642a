"""Build ``captures/incident/incident.pcap.gz``: the capture of docs/incident-walkthrough.md.

Deterministic (fixed addresses, sequence numbers, timestamps; gzip without a
name or time); run from the repository root:
``python captures/incident/make_incident.py``.

Five minutes on the network of a small shop, seconds from the start:

* ``api`` 10.2.0.20:8080 serves the web tier, ``web-1`` 10.1.0.11 and ``web-2``
  10.1.0.12, over pooled keep-alive connections that the web hosts close
  after 30 s idle. Until 90 s the API answers each FIN within milliseconds.
  At 90 s a new API release goes out: it stops watching idle keep-alive
  sockets. For 30 s a sweeper still closes them, 2 to 8 s late; from 120 s
  the API never closes them at all (CLOSE_WAIT on the API, FIN_WAIT_2 on
  the web hosts).
* ``web-2``'s health checker calls ``api`` every 20 s from the fixed source
  port 50000, reusing the 4-tuple while the previous check is still in
  TIME_WAIT.
* ``web-1`` calls ``auth`` 10.2.0.40:8443 twice a second, one connection per
  call, and closes first: it holds a TIME_WAIT for every call.
* ``api`` queries ``db`` 10.2.0.30:5432 every 15 s, and closes first.
* The load balancer ``lb`` 10.0.0.5:443 serves browsers (198.51.100.0/24).
  From 150 s to 200 s, with the web tier's workers stuck, it refuses new
  work by resetting seven connections right after their request arrived,
  before acknowledging it: those requests are lost.
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from craft import T0, Flow, merge, write_pcap

if TYPE_CHECKING:
    from scapy.packet import Packet

HERE = Path(__file__).resolve().parent
SPAN = 300.0
API = ("10.2.0.20", 8080)
WEB1, WEB2 = "10.1.0.11", "10.1.0.12"
DEPLOY = 90.0

#: Pooled connections: (web host, port, opened at, closed by the web at,
#: the API's FIN this many seconds after the web's FIN, or None: never).
POOLED: list[tuple[str, int, float, float, float | None]] = [
    (WEB1, 40100, 1.0, 41.0, 0.0012),
    (WEB2, 40200, 2.5, 44.0, 0.0021),
    (WEB1, 40101, 6.0, 52.5, 0.0009),
    (WEB2, 40201, 11.0, 58.0, 0.0015),
    (WEB1, 40102, 20.0, 63.0, 0.0030),
    (WEB2, 40202, 27.0, 71.5, 0.0011),
    (WEB1, 40103, 33.0, 78.0, 0.0018),
    (WEB2, 40203, 40.0, 86.0, 0.0024),
    # After the release: a sweeper closes them late...
    (WEB1, 40104, 52.0, 95.0, 2.1),
    (WEB2, 40204, 58.0, 100.5, 3.4),
    (WEB1, 40105, 63.0, 104.0, 5.0),
    (WEB2, 40205, 70.0, 110.0, 6.2),
    (WEB1, 40106, 76.0, 117.0, 8.3),
    # ... then nothing does.
    (WEB2, 40206, 84.0, 125.0, None),
    (WEB1, 40107, 95.0, 140.0, None),
    (WEB2, 40207, 104.0, 150.5, None),
    (WEB1, 40108, 118.0, 165.0, None),
    (WEB1, 40109, 133.0, 180.0, None),
    (WEB2, 40208, 150.0, 195.5, None),
    (WEB1, 40110, 162.0, 210.0, None),
    (WEB2, 40209, 175.0, 226.0, None),
    (WEB1, 40111, 190.0, 236.0, None),
    (WEB2, 40210, 215.0, 261.0, None),
    (WEB1, 40112, 232.0, 282.0, None),
]


def steps(f: Flow, script: str) -> None:
    for step in script.split():
        side, flags = step.split(":")
        (f.c if side == "c" else f.s)(flags)


def call(f: Flow, request: bytes, response: bytes, *, at: float | None = None) -> None:
    """One request and its response on an open connection."""
    f.c("PA", request, dt=None if at is None else at - f.t)
    f.s("PA", response, dt=0.004)
    f.c("A", dt=0.0002)


def pooled() -> list[Flow]:
    out = []
    for i, (host, port, opened, closed, fin_after) in enumerate(POOLED):
        f = Flow(client=(host, port), server=API, t=T0 + opened, client_isn=10_000 + i * 7919,
                 server_isn=90_000 + i * 104_729)  # fmt: skip
        steps(f, "c:S s:SA c:A")
        # Busy for a while, then idle for the pool's 30 s before the close.
        t = opened + 0.5
        while t < closed - 30.0:
            call(f, b"GET /v1/orders HTTP/1.1\r\nHost: api\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n[]",
                 at=T0 + t)  # fmt: skip
            t += 4.0
        f.c("FA", dt=T0 + closed - f.t)
        f.s("A", dt=0.0003)
        if fin_after is not None:
            f.s("FA", dt=fin_after)
            f.c("A", dt=0.0002)
        out.append(f)
    return out


def health_checks() -> list[Flow]:
    out = []
    for k, at in enumerate(range(5, int(SPAN), 20)):
        f = Flow(client=(WEB2, 50000), server=API, t=T0 + at, client_isn=500_000 + k * 1_000_003,
                 server_isn=7_000_000 + k * 999_983)  # fmt: skip
        steps(f, "c:S s:SA c:A")
        call(f, b"GET /health HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\nok")
        steps(f, "c:FA s:FA c:A")
        out.append(f)
    return out


def auth_calls() -> list[Flow]:
    out = []
    for k in range(int(SPAN * 2) - 2):
        f = Flow(client=(WEB1, 32768 + k), server=("10.2.0.40", 8443), t=T0 + 0.25 + k * 0.5,
                 client_isn=3_000_000 + k * 65_537, server_isn=8_000_000 + k * 131_071)  # fmt: skip
        steps(f, "c:S s:SA c:A")
        f.c("PA", b"POST /token HTTP/1.1\r\n\r\n" + b"k" * 40)
        f.s("PA", b"HTTP/1.1 200 OK\r\n\r\n" + b"t" * 64, dt=0.003)
        # The client closes first: the TIME_WAIT is web-1's.
        steps(f, "c:FA s:FA c:A")
        out.append(f)
    return out


def db_queries() -> list[Flow]:
    out = []
    for k, at in enumerate(range(3, int(SPAN), 15)):
        f = Flow(client=(API[0], 45000 + k), server=("10.2.0.30", 5432), t=T0 + at,
                 client_isn=600_000 + k * 77_777)  # fmt: skip
        steps(f, "c:S s:SA c:A")
        call(f, b"Q select 1", b"T 1 row")
        steps(f, "c:FA s:A")
        f.s("FA", dt=0.0008)
        f.c("A")
        out.append(f)
    return out


#: Requests the load balancer reset before acknowledging them: (at, bytes).
LB_RESETS = [(152.0, 517), (158.5, 1400), (163.0, 880), (171.0, 1212), (179.5, 640),
             (188.0, 1033), (196.0, 402)]  # fmt: skip


def browsers() -> list[Flow]:
    out = []
    lb = ("10.0.0.5", 443)
    for k, at in enumerate(range(4, int(SPAN), 8)):
        f = Flow(client=(f"198.51.100.{10 + k % 30}", 51000 + k), server=lb, t=T0 + at + 0.3)
        steps(f, "c:S s:SA c:A")
        call(f, b"\x17\x03\x03" + b"r" * 300, b"\x17\x03\x03" + b"s" * 1200)
        steps(f, "c:FA s:FA c:A")
        out.append(f)
    for k, (at, size) in enumerate(LB_RESETS):
        f = Flow(client=(f"198.51.100.{60 + k}", 52000 + k), server=lb, t=T0 + at)
        steps(f, "c:S s:SA c:A")
        f.c("PA", b"\x17\x03\x03" + b"q" * (size - 3))
        # The RST acknowledges only the SYN: the request is thrown away.
        f.s("RA", ack=f.client_nxt - size, dt=0.0004)
        out.append(f)
    return out


def build() -> list[Packet]:
    return merge(
        *(f.packets for f in pooled() + health_checks() + auth_calls() + db_queries() + browsers())
    )


def write(path: Path) -> None:
    plain = path.with_suffix("")
    write_pcap(str(plain), build())
    data = plain.read_bytes()
    plain.unlink()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    path.write_bytes(buf.getvalue())


if __name__ == "__main__":
    write(HERE / "incident.pcap.gz")
    print("wrote", HERE / "incident.pcap.gz")
