"""Build ``captures/zeek/*.pcap``: one connection per Zeek ``conn_state``.

Each capture holds a single crafted connection whose ``conn_state`` follows
by hand from Zeek's rules (``docs/schema/README.md`` cites them); the name
says which. Deterministic; run from the repository root:
``python captures/zeek/make_zeek.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from craft import T0, Flow, write_pcap

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).resolve().parent


def _flow() -> Flow:
    return Flow(client=("10.1.0.1", 40000), server=("10.1.0.2", 80), t=T0)


def _open(f: Flow) -> Flow:
    f.c("S")
    f.s("SA")
    f.c("A")
    f.c("PA", b"GET / HTTP/1.1\r\n\r\n")
    f.s("PA", b"HTTP/1.1 200 OK\r\n\r\n")
    return f


def s0() -> Flow:
    """A SYN and its retransmission, never answered."""
    f = _flow()
    f.c("S")
    f.c("S", seq=f.client_isn, dt=1.0)
    return f


def s1() -> Flow:
    """Established, data both ways, never closed."""
    return _open(_flow())


def s1_missed_syn() -> Flow:
    """The SYN was not captured: the SYN+ACK from port 80 comes first."""
    f = _flow()
    f.c("S", record=False)
    f.s("SA")
    f.c("A")
    f.c("PA", b"ping")
    f.s("PA", b"pong")
    return f


def sf() -> Flow:
    """Four-segment close started by the client."""
    f = _open(_flow())
    f.c("FA")
    f.s("A")
    f.s("FA")
    f.c("A")
    return f


def rej() -> Flow:
    """The server refuses the SYN with RST+ACK."""
    f = _flow()
    f.c("S")
    f.s("RA", seq=0)
    return f


def s2() -> Flow:
    """The client closes; the server acknowledges and never closes."""
    f = _open(_flow())
    f.c("FA")
    f.s("A")
    return f


def s3() -> Flow:
    """The server closes; the client acknowledges and never closes."""
    f = _open(_flow())
    f.s("FA")
    f.c("A")
    return f


def rsto() -> Flow:
    """The client aborts an established connection."""
    f = _open(_flow())
    f.c("RA")
    return f


def rstr() -> Flow:
    """The server aborts an established connection."""
    f = _open(_flow())
    f.s("RA")
    return f


def rstos0() -> Flow:
    """The client sends a SYN, then a RST; no answer."""
    f = _flow()
    f.c("S")
    f.c("R", dt=0.5)
    return f


def rstos0_acked() -> Flow:
    """Zeek's own baseline case ``SaR``: the server ACKs the SYN (no SYN+ACK)."""
    f = _flow()
    f.c("S")
    f.s("A")
    f.c("R")
    return f


def rstrh() -> Flow:
    """No SYN captured: the server's SYN+ACK, then its RST."""
    f = _flow()
    f.c("S", record=False)
    f.s("SA")
    f.s("R", dt=0.5)
    return f


def sh() -> Flow:
    """The client sends a SYN, then a FIN; no answer."""
    f = _flow()
    f.c("S")
    f.c("F", dt=0.5)
    return f


def shr() -> Flow:
    """No SYN captured: the server's SYN+ACK, then its FIN; the client silent."""
    f = _flow()
    f.c("S", record=False)
    f.s("SA")
    f.s("FA", dt=0.5)
    return f


def oth() -> Flow:
    """Mid-stream: data both ways, no SYN, no close."""
    f = _flow()
    f.c("S", record=False)
    f.s("SA", record=False)
    f.c("A", record=False)
    f.c("PA", b"more")
    f.s("PA", b"data")
    f.c("A")
    return f


def oth_fin_rst() -> Flow:
    """Zeek's own baseline case ``SaFR``: SYN, an ACK of it, FIN, RST."""
    f = _flow()
    f.c("S")
    f.s("A")
    f.c("F")
    f.c("R")
    return f


def oth_rst_only() -> Flow:
    """Zeek's own baseline case ``R``: a lone RST."""
    f = _flow()
    f.c("R")
    return f


#: capture name → (builder, the conn_state Zeek's rules give it)
CAPTURES: dict[str, tuple[Callable[[], Flow], str]] = {
    "s0_syn_unanswered": (s0, "S0"),
    "s1_established": (s1, "S1"),
    "s1_missed_syn": (s1_missed_syn, "S1"),
    "sf_graceful": (sf, "SF"),
    "rej_refused": (rej, "REJ"),
    "s2_orig_closed": (s2, "S2"),
    "s3_resp_closed": (s3, "S3"),
    "rsto_orig_abort": (rsto, "RSTO"),
    "rstr_resp_abort": (rstr, "RSTR"),
    "rstos0_syn_then_rst": (rstos0, "RSTOS0"),
    "rstos0_syn_ack_rst": (rstos0_acked, "RSTOS0"),
    "rstrh_synack_then_rst": (rstrh, "RSTRH"),
    "sh_syn_then_fin": (sh, "SH"),
    "shr_synack_then_fin": (shr, "SHR"),
    "oth_midstream": (oth, "OTH"),
    "oth_syn_ack_fin_rst": (oth_fin_rst, "OTH"),
    "oth_lone_rst": (oth_rst_only, "OTH"),
}


def main() -> None:
    for name, (build, _state) in CAPTURES.items():
        write_pcap(str(HERE / f"{name}.pcap"), build().packets)


if __name__ == "__main__":
    main()
