"""Build ``captures/closes/``: one small capture per close type and variant.

Every conversation is crafted with :class:`craft.Flow`, so sequence and
acknowledgement numbers are right unless a scenario says otherwise on
purpose. Timestamps are deterministic: each flow starts at ``T0`` and, unless
a line says ``dt=``, advances one second per segment, so frame *k* of a
one-connection capture is at ``T0 + k`` (``T0`` = 1700000000). That keeps the
golden files (``<name>.golden.json``, written by hand from
``../shared/TEARDOWN.md``) easy to check against the segments below.

Client 10.0.0.1 (2001:db8::1 in the ``_ipv6`` twins), server 10.0.0.2
(2001:db8::2); each scenario has its own client port, so the captures can
also be analysed together. A twin's golden is its IPv4 golden with the two
addresses (and the file name) replaced: the segments are the same. Unless a scenario sets them, the ISNs are 1000
(client) and 5000 (server); data is 100 bytes from the client and 200 from
the server.

Run from the repository root: ``python captures/make_closes.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from craft import T0, Flow, merge, write_pcap

HERE = Path(__file__).parent / "closes"
V4 = ("10.0.0.1", "10.0.0.2")
V6 = ("2001:db8::1", "2001:db8::2")

Builder = Callable[[str, str], list[Packet]]
#: name -> (builder, also write an IPv6 twin)
SCENARIOS: dict[str, tuple[Builder, bool]] = {}


def scenario(name: str, *, twin: bool = False) -> Callable[[Builder], Builder]:
    def register(build: Builder) -> Builder:
        SCENARIOS[name] = (build, twin)
        return build

    return register


def flow(
    c_ip: str,
    s_ip: str,
    cport: int,
    sport: int = 80,
    *,
    client_isn: int = 1000,
    server_isn: int = 5000,
    t: float = T0,
    dt: float = 1.0,
) -> Flow:
    return Flow(
        client=(c_ip, cport),
        server=(s_ip, sport),
        client_isn=client_isn,
        server_isn=server_isn,
        t=t,
        dt=dt,
    )


def opening(f: Flow, *, c_bytes: int = 100, s_bytes: int = 200) -> None:
    """Frames 1-5: handshake, a request, a response."""
    f.c("S")
    f.s("SA")
    f.c("A")
    f.c("PA", b"q" * c_bytes)
    f.s("PA", b"r" * s_bytes)


# -- the four complete closes ---------------------------------------------------


@scenario("graceful_client_first", twin=True)
def graceful_client_first(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41001)
    opening(f)
    f.c("FA")  # 6
    f.s("A")  # 7  server CLOSE_WAIT
    f.s("FA")  # 8
    f.c("A")  # 9  client TIME_WAIT
    return f.packets


@scenario("graceful_server_first", twin=True)
def graceful_server_first(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41002)
    opening(f)
    f.s("FA")  # 6
    f.c("A")  # 7
    f.c("FA")  # 8
    f.s("A")  # 9  server TIME_WAIT
    return f.packets


@scenario("piggybacked_client_first", twin=True)
def piggybacked_client_first(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41003)
    opening(f)
    f.c("FA")  # 6
    f.s("FA")  # 7  acknowledges the client's FIN and closes in one segment
    f.c("A")  # 8
    return f.packets


@scenario("piggybacked_server_first", twin=True)
def piggybacked_server_first(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41004)
    opening(f)
    f.s("FA")  # 6
    f.c("FA")  # 7
    f.s("A")  # 8
    return f.packets


@scenario("simultaneous_close", twin=True)
def simultaneous_close(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41005)
    opening(f)
    f.c("FA")  # 6
    # 7: the server's FIN crossed the client's: it acknowledges only up to it.
    f.s("FA", ack=f.client_nxt - 1)
    f.c("A")  # 8  acknowledges the server's FIN
    f.s("A")  # 9  acknowledges the client's FIN
    return f.packets


@scenario("half_close", twin=True)
def half_close(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41006)
    opening(f)
    f.c("FA")  # 6  the client shuts down its sending side only
    f.s("PA", b"h" * 300)  # 7  acknowledges the FIN and keeps sending
    f.c("A")  # 8
    f.s("PA", b"i" * 400)  # 9
    f.s("PA", b"i" * 400, seq=f.server_nxt - 400)  # 10 a retransmission: not new
    f.c("A")  # 11
    f.s("FA")  # 12
    f.c("A")  # 13
    return f.packets


@scenario("passive_fin_with_data")
def passive_fin_with_data(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41028)
    opening(f)
    f.c("FA")  # 6
    f.s("FPA", b"tail")  # 7  acknowledges the FIN, 4 last bytes, its own FIN
    f.c("A")  # 8
    return f.packets


# -- closes that did not finish ---------------------------------------------------


@scenario("close_wait_stuck", twin=True)
def close_wait_stuck(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41007, 5432)
    opening(f)
    f.c("FA")  # 6
    f.s("A")  # 7  server CLOSE_WAIT, and it never closes
    # Linux keep-alive probes (seq = SND.UNA - 1, no data) from the server's
    # kernel, and the client's answers: the application stays idle.
    f.s("A", seq=f.server_nxt - 1, dt=75.0)  # 8  at T0+82
    f.c("A")  # 9  at T0+83
    f.s("A", seq=f.server_nxt - 1, dt=75.0)  # 10 at T0+158
    f.c("A")  # 11 at T0+159
    return f.packets


@scenario("close_wait_recent")
def close_wait_recent(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41008, 5432)
    opening(f)
    f.c("FA")  # 6
    f.s("A")  # 7  server CLOSE_WAIT
    f.s("PA", b"w" * 50)  # 8  still sending: not idle
    f.c("A", dt=10.0)  # 9  at T0+18, the end of the capture
    return f.packets


@scenario("close_wait_superseded_by_new_syn")
def close_wait_superseded_by_new_syn(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41009, 5432)
    f.c("S")  # 1
    f.s("SA")  # 2
    f.c("A")  # 3
    f.c("FA")  # 4
    f.s("A")  # 5  server CLOSE_WAIT
    # 90 s later the client reuses the port: a SYN with another ISN opens
    # stream 1 on the same 4-tuple.
    g = flow(c, s, 41009, 5432, client_isn=900_000, server_isn=700_000, t=f.t + 89.0)
    g.c("S")  # 6  at T0+95
    g.c("S", seq=900_000)  # 7  retransmitted SYN: same stream
    g.s("SA")  # 8
    g.c("A")  # 9
    g.c("FA")  # 10
    g.s("FA")  # 11
    g.c("A")  # 12
    return f.packets + g.packets


@scenario("close_wait_busy_capture")
def close_wait_busy_capture(c: str, s: str) -> list[Packet]:
    # Stream 0 ends in CLOSE_WAIT at T0+7; stream 1, another connection,
    # keeps exchanging plain data until T0+120: the capture ends there.
    f = flow(c, s, 41010, 5432)
    opening(f)
    f.c("FA")  # T0+6
    f.s("A")  # T0+7
    g = flow(c, s, 41011, 80, t=T0 + 10.0, dt=10.0)
    g.c("S")  # T0+20
    g.s("SA")  # T0+30
    g.c("A")  # T0+40
    g.c("PA", b"a" * 10)  # T0+50
    g.s("PA", b"b" * 20)  # T0+60
    g.c("PA", b"c" * 30)  # T0+70
    g.s("PA", b"d" * 40)  # T0+80
    g.c("PA", b"e" * 50)  # T0+90
    g.s("PA", b"f" * 60)  # T0+100
    g.c("A")  # T0+110
    g.s("A")  # T0+120
    return merge(f.packets, g.packets)


@scenario("unacked_fin", twin=True)
def unacked_fin(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41012)
    opening(f)
    f.c("FA")  # 6
    f.c("FA", seq=f.client_nxt - 1)  # 7  retransmitted: the server is gone
    f.c("FA", seq=f.client_nxt - 1, dt=2.0)  # 8 at T0+9
    return f.packets


@scenario("open", twin=True)
def open_connection(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41013)
    opening(f)
    f.c("A")  # 6
    return f.packets


@scenario("attempt_syn_unanswered", twin=True)
def attempt_syn_unanswered(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41014, 443)
    f.c("S")  # 1
    f.c("S", seq=1000)  # 2  retransmissions keep the ISN: one stream
    f.c("S", seq=1000, dt=2.0)  # 3  at T0+4
    return f.packets


@scenario("attempt_no_final_ack")
def attempt_no_final_ack(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41015, 443)
    f.c("S")  # 1
    f.s("SA")  # 2
    f.s("SA", seq=5000)  # 3  the SYN+ACK again: the handshake never completes
    return f.packets


# -- resets -------------------------------------------------------------------------


@scenario("refused", twin=True)
def refused(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41016, 81)
    f.c("S")  # 1
    f.s("RA", seq=0)  # 2  closed port: RST+ACK acknowledging the SYN
    return f.packets


@scenario("syn_answered_by_bare_rst")
def syn_answered_by_bare_rst(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41017, 81)
    f.c("S")  # 1
    # 2: a RST without ACK: RFC 9293 3.10.7.3 and Linux drop it in SYN-SENT,
    # and the client goes on retransmitting its SYN.
    f.s("R", seq=0)
    f.c("S", seq=1000)  # 3
    f.c("S", seq=1000, dt=2.0)  # 4  at T0+5
    return f.packets


@scenario("reset_established_client", twin=True)
def reset_established_client(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41018)
    opening(f)
    f.s("PA", b"m" * 300)  # 6
    # 7: the client aborts; its RST acknowledges the 200 bytes of frame 5,
    # not the 300 of frame 6: those are lost.
    f.c("RA", ack=f.server_nxt - 300)
    return f.packets


@scenario("reset_established_server")
def reset_established_server(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41019)
    opening(f)
    f.s("RA")  # 6
    return f.packets


@scenario("rst_with_data")
def rst_with_data(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41020)
    opening(f)
    f.s("RA", b"server is shutting down")  # 6  23 bytes of diagnostic text
    return f.packets


@scenario("fin_then_rst", twin=True)
def fin_then_rst(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41021)
    opening(f)
    f.c("FA")  # 6  the client application closes the socket
    f.s("A")  # 7
    f.s("PA", b"z" * 300)  # 8  data for a socket nobody reads any more
    # 9: Linux answers with RST (seq = that segment's ACK number, no ACK).
    f.c("R", ack=0)
    return f.packets


@scenario("fin_rst_same_segment")
def fin_rst_same_segment(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41022)
    opening(f)
    f.c("FRA")  # 6
    return f.packets


@scenario("reset_after_close")
def reset_after_close(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41023)
    opening(f)
    f.c("FA")  # 6
    f.s("A")  # 7
    f.s("FA")  # 8
    f.c("A")  # 9  both FINs acknowledged
    # 10: the server's FIN again, 20 s later (the ACK of frame 9 was lost
    # after the capture point); the client no longer has the connection.
    f.s("FA", seq=f.server_nxt - 1, dt=20.0)  # at T0+29
    f.c("R", ack=0)  # 11 at T0+30
    return f.packets


@scenario("reset_during_handshake", twin=True)
def reset_during_handshake(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41024)
    f.c("S")  # 1  a half-open (SYN) scan
    f.s("SA")  # 2
    f.c("R", ack=0)  # 3
    return f.packets


# -- odd flag combinations ------------------------------------------------------------


@scenario("syn_fin")
def syn_fin(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41025)
    f.c("SF")  # 1  Linux drops SYN+FIN at a listening socket: no answer
    return f.packets


@scenario("syn_fin_refused")
def syn_fin_refused(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41026, 81)
    f.c("SF")  # 1
    f.s("RA", seq=0)  # 2  closed port: ACK = ISN + 2 (SYN and FIN)
    return f.packets


@scenario("fin_with_data")
def fin_with_data(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41027)
    opening(f)
    f.c("FPA", b"bye")  # 6  FIN at 1101 + 3 = 1104
    f.s("A", ack=f.client_nxt - 1)  # 7  ACK 1104: the data, not the FIN
    f.s("A")  # 8  ACK 1105 = seq + len + 1: the FIN
    f.s("FA")  # 9
    f.c("A")  # 10
    return f.packets


@scenario("bare_fin_without_ack")
def bare_fin_without_ack(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41029)
    opening(f)
    f.c("F")  # 6  no ACK bit: a synchronized receiver drops it
    f.c("FA", seq=f.client_nxt - 1)  # 7  the same FIN again, with ACK
    f.s("A")  # 8
    f.s("FA")  # 9
    f.c("A")  # 10
    return f.packets


# -- sequence numbers that wrap --------------------------------------------------------


@scenario("seq_wrap_during_data")
def seq_wrap_during_data(c: str, s: str) -> list[Packet]:
    # The client's data runs from 0xFFFFFFF1 past 2^32; the server's starts
    # at 0xFFFFFFFF.
    f = flow(c, s, 41030, client_isn=0xFFFFFFF0, server_isn=0xFFFFFFFE)
    f.c("S")  # 1
    f.s("SA")  # 2
    f.c("A")  # 3
    f.c("PA", b"q" * 100)  # 4
    f.s("PA", b"r" * 1000)  # 5
    f.c("A")  # 6
    f.c("FA")  # 7  FIN at 0x55
    f.s("FA")  # 8  FIN at 0x3E7, ACK 0x56
    f.c("A")  # 9
    return f.packets


@scenario("seq_wrap_at_fin", twin=True)
def seq_wrap_at_fin(c: str, s: str) -> list[Packet]:
    # Both FINs occupy sequence number 0xFFFFFFFF; the ACK covering each is 0.
    f = flow(c, s, 41031, client_isn=0xFFFFFF9A, server_isn=0xFFFFFF36)
    opening(f)  # client data 0xFFFFFF9B-0xFFFFFFFE, server 0xFFFFFF37-0xFFFFFFFE
    f.c("FA")  # 6
    f.s("A")  # 7  ACK 0
    f.s("FA")  # 8
    f.c("A")  # 9  ACK 0
    return f.packets


# -- retransmitted FINs and lost final ACKs ----------------------------------------------


@scenario("fin_retransmitted")
def fin_retransmitted(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41032)
    opening(f)
    f.c("FA")  # 6
    f.c("FA", seq=f.client_nxt - 1)  # 7  same sequence number: a retransmission
    f.s("A")  # 8
    f.s("FA")  # 9
    f.c("A")  # 10
    return f.packets


@scenario("final_ack_lost")
def final_ack_lost(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41033)
    opening(f)
    f.c("FA")  # 6
    f.s("A")  # 7
    f.s("FA")  # 8
    f.c("A")  # 9  captured, then lost on the way to the server
    f.s("FA", seq=f.server_nxt - 1)  # 10 so the server sends its FIN again
    f.c("A")  # 11
    return f.packets


@scenario("final_ack_never_seen")
def final_ack_never_seen(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41034)
    opening(f)
    f.c("FA")  # 6
    f.s("A")  # 7
    f.s("FA")  # 8
    f.s("FA", seq=f.server_nxt - 1)  # 9
    f.s("FA", seq=f.server_nxt - 1, dt=2.0)  # 10 at T0+11
    return f.packets


# -- noise around the close ---------------------------------------------------------------


@scenario("noisy_close")
def noisy_close(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41035)
    f.c("S")  # 1
    f.s("SA")  # 2
    f.c("A")  # 3
    f.c("PA", b"q" * 100)  # 4
    f.s("PA", b"r" * 1000)  # 5
    f.c("A", window=0)  # 6  receive window full
    f.s("A", b"r")  # 7  zero-window probe: one new byte
    f.c("A", ack=f.server_nxt - 1, window=0)  # 8  the probe byte not taken
    f.c("A", ack=f.server_nxt - 1)  # 9  window update (a duplicate ACK number)
    f.s("PA", b"r" * 500, seq=f.server_nxt - 1)  # 10 the probe byte again + 499 new
    f.c("A")  # 11
    f.c("FA")  # 12
    f.s("A")  # 13 server CLOSE_WAIT
    f.s("A", ack=f.client_nxt - 1)  # 14 an older ACK, captured late: changes nothing
    f.s("A", seq=f.server_nxt - 1)  # 15 keep-alive
    f.c("A")  # 16 its answer
    f.s("FA")  # 17
    f.c("A")  # 18 client TIME_WAIT
    f.c("A")  # 19 a duplicate of the final ACK
    return f.packets


@scenario("ack_captured_before_fin")
def ack_captured_before_fin(c: str, s: str) -> list[Packet]:
    # Two capture queues reordered the client's FIN and the server's ACK of it.
    f = flow(c, s, 41044)
    opening(f)
    fin = f.c("FA", record=False)  # sent at T0+6 ...
    f.s("A", dt=0.5)  # 6  T0+6.5: ACK 1102, covering a FIN not yet captured
    fin.time = f.t + 0.25
    f.packets.append(fin)  # 7  ... captured at T0+6.75
    f.t = fin.time
    f.s("FA", dt=0.25)  # 8  T0+7
    f.c("A")  # 9  T0+8
    return f.packets


# -- captures that miss part of the conversation --------------------------------------------


@scenario("midstream_start", twin=True)
def midstream_start(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41036)  # no handshake: the capture started late
    f.c("PA", b"q" * 100)  # 1
    f.s("PA", b"r" * 200)  # 2
    f.c("A")  # 3
    f.c("FA")  # 4
    f.s("FA")  # 5
    f.c("A")  # 6
    return f.packets


@scenario("midstream_first_packet_from_server")
def midstream_first_packet_from_server(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41037)
    f.s("PA", b"r" * 200)  # 1
    f.c("A")  # 2
    f.c("PA", b"q" * 50)  # 3
    f.s("A")  # 4
    f.s("FA")  # 5
    f.c("A")  # 6
    f.c("FA")  # 7
    f.s("A")  # 8
    return f.packets


@scenario("midstream_synack_start")
def midstream_synack_start(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41038)
    f.c("S", record=False)  # before the capture started
    f.s("SA")  # 1  at T0+2
    f.c("A")  # 2
    f.c("PA", b"q" * 100)  # 3
    f.s("PA", b"r" * 200)  # 4
    f.c("FA")  # 5
    f.s("FA")  # 6
    f.c("A")  # 7  at T0+8
    return f.packets


@scenario("one_sided_client_only", twin=True)
def one_sided_client_only(c: str, s: str) -> list[Packet]:
    # Only the client-to-server direction was captured (asymmetric routing).
    f = flow(c, s, 41039)
    f.c("S")  # 1  T0+1
    f.s("SA", record=False)  # T0+2
    f.c("A")  # 2  T0+3
    f.c("PA", b"q" * 100)  # 3  T0+4
    f.s("PA", b"r" * 200, record=False)  # T0+5
    f.c("A")  # 4  T0+6
    f.c("FA")  # 5  T0+7
    f.s("FA", record=False)  # T0+8
    f.c("A")  # 6  T0+9
    return f.packets


@scenario("one_sided_server_only")
def one_sided_server_only(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41040)
    f.c("S", record=False)  # T0+1
    f.s("SA")  # 1  T0+2
    f.c("A", record=False)  # T0+3
    f.c("PA", b"q" * 100, record=False)  # T0+4
    f.s("PA", b"r" * 200)  # 2  T0+5
    f.c("A", record=False)  # T0+6
    f.s("FA")  # 3  T0+7
    f.c("FA", record=False)  # T0+8
    f.s("A")  # 4  T0+9
    return f.packets


@scenario("one_sided_midstream")
def one_sided_midstream(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41041)
    f.s("PA", b"r" * 200)  # 1
    f.c("A", record=False)
    f.s("PA", b"r" * 200)  # 2  T0+3
    f.c("A", record=False)
    f.s("PA", b"r" * 200)  # 3  T0+5
    return f.packets


# -- a 4-tuple used twice ------------------------------------------------------------------


@scenario("reused_tuple_in_time_wait", twin=True)
def reused_tuple_in_time_wait(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41042)
    opening(f)
    f.c("FA")  # 6
    f.s("A")  # 7
    f.s("FA")  # 8
    f.c("A")  # 9  the client holds TIME_WAIT until T0+69 (2 x 30 s)
    g = flow(c, s, 41042, client_isn=200_000, server_isn=300_000, t=f.t + 4.0)
    g.c("S")  # 10 at T0+14, 5 s after frame 9: a new stream
    g.s("SA")  # 11
    g.c("A")  # 12
    g.c("FA")  # 13
    g.s("FA")  # 14
    g.c("A")  # 15
    return f.packets + g.packets


# -- ICMP ------------------------------------------------------------------------------------


@scenario("syn_icmp_unreachable")
def syn_icmp_unreachable(c: str, s: str) -> list[Packet]:
    f = flow(c, s, 41043, 443)
    syn = f.c("S")  # 1
    # 2: a router answers with ICMP host unreachable, quoting the SYN.
    quoted = syn[IP].copy()
    icmp = (
        Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:01")
        / IP(src="10.0.0.254", dst=c)
        / ICMP(type=3, code=1)
        / bytes(quoted)[: 20 + 20]
    )
    icmp.time = f.t + 0.5
    f.packets.append(icmp)
    return f.packets


def build_all() -> dict[str, list[Packet]]:
    out: dict[str, list[Packet]] = {}
    for name, (build, twin) in SCENARIOS.items():
        out[name] = build(*V4)
        if twin:
            out[name + "_ipv6"] = build(*V6)
    return out


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name, packets in build_all().items():
        write_pcap(str(HERE / f"{name}.pcap"), packets)
    print(f"wrote {len(SCENARIOS)} scenarios to {HERE}")


if __name__ == "__main__":
    main()
