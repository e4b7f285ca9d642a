"""Build ``captures/report/incident.pcap.gz``: five minutes of an incident, for the HTML report.

Deterministic (fixed addresses, sequence numbers and timestamps, gzip without
a name or time); run from the repository root:
``python captures/report/make_incident.py``.

What happens (seconds from the start):

* a cache client, 10.1.0.9, opens short connections to 10.2.0.30:6379 and
  closes them itself (so it holds TIME_WAIT): one every 2 s, a retry storm
  of four a second from 100 s to 200 s, then one a second;
* web clients 10.1.0.1-4 call 10.2.0.10:8080, which closes first (the server
  holds TIME_WAIT), one call every 2 s;
* at 150 s 10.2.0.10:8080 restarts: the call in flight is reset by the
  server, and for 20 s every SYN is refused; from 175 s on the load balancer
  10.1.0.4 gives up on slow closes with a RST while the FINs are exchanged;
* the workers of 10.2.0.50:9000 are slow to close once a client has sent
  its FIN (0.2 s to 4 s in CLOSE_WAIT), and eight connections from 140 s on
  are never closed at all (stuck in CLOSE_WAIT at the end).
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


def cache(t: float, port: int) -> list[Packet]:
    f = Flow(client=("10.1.0.9", port), server=("10.2.0.30", 6379), t=t)
    f.c("S")
    f.s("SA")
    f.c("A")
    f.c("PA", b"GET k\r\n")
    f.s("PA", b"$1\r\nv\r\n")
    f.c("FA")
    f.s("FA")
    f.c("A")
    return f.packets


def web(t: float, n: int, *, restart: bool) -> list[Packet]:
    client = (f"10.1.0.{1 + n % 4}", 30000 + n)
    f = Flow(client=client, server=("10.2.0.10", 8080), t=t, client_isn=7000 + n)
    f.c("S")
    if restart:
        f.s("RA", seq=0)
        return f.packets
    f.s("SA")
    f.c("A")
    f.c("PA", b"GET /api HTTP/1.1\r\n\r\n")
    if 150.0 <= t - T0 < 151.5:
        f.s("RA", dt=0.2)  # the restart kills the request in flight
        return f.packets
    f.s("PA", b"HTTP/1.1 200 OK\r\n\r\n{}", dt=0.02)
    f.s("FA")
    if t - T0 >= 175 and n % 3 == 0 and client[0] == "10.1.0.4":
        f.c("RA", dt=0.5)  # the load balancer gives up during the close
        return f.packets
    f.c("FA")
    f.s("A")
    return f.packets


def worker(t: float, n: int, *, stuck: bool) -> list[Packet]:
    f = Flow(client=(f"10.1.0.{1 + n % 2}", 50000 + n), server=("10.2.0.50", 9000), t=t)
    f.c("S")
    f.s("SA")
    f.c("A")
    f.c("PA", b"job")
    f.s("PA", b"done")
    f.c("FA")
    f.s("A")
    if stuck:
        return f.packets
    wait = 0.2 * (1 + n % 20)  # 0.2 s to 4 s before the worker closes
    f.s("FA", dt=wait)
    f.c("A")
    return f.packets


def build() -> list[Packet]:
    flows: list[list[Packet]] = []
    t, port = 0.0, 20000
    while t < SPAN:
        flows.append(cache(T0 + t, port))
        port += 1
        t += 0.25 if 100 <= t < 200 else 2.0 if t < 100 else 1.0
    for n, t in enumerate(x * 2.0 + 0.3 for x in range(int(SPAN / 2))):
        flows.append(web(T0 + t, n, restart=150 <= t < 170 and not 150 <= t < 151.5))
    for n, t in enumerate(x * 5.0 + 0.7 for x in range(int(SPAN / 5) - 3)):
        flows.append(worker(T0 + t, n, stuck=140 <= t < 180))
    return merge(*flows)


if __name__ == "__main__":
    raw = HERE / "incident.pcap"
    write_pcap(str(raw), build())
    out = HERE / "incident.pcap.gz"
    buf = io.BytesIO()
    # mtime=0 and no file name: the same bytes on every run.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(raw.read_bytes())
    out.write_bytes(buf.getvalue())
    raw.unlink()
    print("wrote", out)
