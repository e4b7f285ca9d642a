"""The scenarios: each drives real sockets through one way of ending a connection.

Each takes the run's :class:`~linux.driver.Ctx`, makes its connection(s) on
its own pair of ports and fills in what it did and what follows from that.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import TYPE_CHECKING

from linux import netns
from linux.driver import (
    CHUNK,
    CHUNKS,
    PASSIVE_DELAY_S,
    PASSIVE_GONE,
    REQUEST,
    RESET_GONE,
    RESPONSE,
    SETTLE_S,
    abort,
    both,
    closed,
    exchange,
    read_to_eof,
    reset,
    reset_seen,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from linux.driver import Conn, Ctx

LATE = b"late data\n"
FILLER = b"f" * 1400
#: Slow enough that two queued filler datagrams hold a FIN back ~100 ms.
SLOW_RATE = "200kbit"
#: Keeps the retransmitted FIN well after the dropping filter is gone, even on
#: a loaded machine (Linux's default minimum RTO is 200 ms).
RTO_MIN_US = 400_000


def _graceful(conn: Conn, *, closer: str) -> None:
    conn.expect = closed(closer=closer)
    conn.fin_order_from_wire = True
    passive = "server" if closer == "client" else "client"
    conn.predict_end = {closer: "TIME_WAIT", passive: "CLOSED"}
    conn.gone, conn.gone_why = "CLOSED", PASSIVE_GONE


def graceful_client_first(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "graceful_client_first")
    exchange(c, s)
    c.close()
    read_to_eof(s)
    ctx.look(conn, "client closed, server read EOF")
    time.sleep(PASSIVE_DELAY_S)
    ctx.look(conn, "before the server's close()")
    s.close()
    conn.did = [
        "request and response",
        "client close()",
        f"server read EOF, close() {PASSIVE_DELAY_S} s later",
    ]
    _graceful(conn, closer="client")


def graceful_server_first(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "graceful_server_first")
    exchange(c, s)
    s.close()
    read_to_eof(c)
    ctx.look(conn, "server closed, client read EOF")
    time.sleep(PASSIVE_DELAY_S)
    ctx.look(conn, "before the client's close()")
    c.close()
    conn.did = [
        "request and response",
        "server close()",
        f"client read EOF, close() {PASSIVE_DELAY_S} s later",
    ]
    _graceful(conn, closer="server")


def close_on_eof(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "close_on_eof")
    exchange(c, s)
    c.close()
    read_to_eof(s)
    s.close()
    conn.did = [
        "request and response",
        "client close()",
        "server close() as soon as its read returned EOF",
    ]
    _graceful(conn, closer="client")


def simultaneous(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "simultaneous")
    exchange(c, s)
    time.sleep(SETTLE_S)
    # Datagrams queued on each veth end ahead of the FINs keep both FINs in
    # flight together; data of the connection itself would not do: data
    # arriving after close() is answered with RST.
    uc = ctx.lab.socket(ctx.lab.client, ctx.family, socket.SOCK_DGRAM)
    us = ctx.lab.socket(ctx.lab.server, ctx.family, socket.SOCK_DGRAM)
    with uc, us:
        uc.bind((conn.client[0], 9))
        us.bind((conn.server[0], 9))
        with netns.slow_link(ctx.lab, SLOW_RATE):
            for _ in range(3):
                uc.sendto(FILLER, (conn.server[0], 9))
                us.sendto(FILLER, (conn.client[0], 9))
            c.close()
            s.close()
            ctx.look(conn, "both closed, FINs queued")
            ctx.wait_ss(
                conn,
                lambda now: (
                    None not in now.values()
                    and "FIN_WAIT_1" not in now.values()
                    and "CLOSING" not in now.values()
                ),
            )
    conn.did = [
        "request and response",
        f"both veth ends limited to {SLOW_RATE} (tbf), "
        "3 UDP datagrams of 1400 bytes queued on each",
        "client close(), server close() right after: both FINs wait behind the datagrams",
    ]
    conn.expect = closed(closer="both", close_type="simultaneous")
    conn.predict_end = {"client": "TIME_WAIT", "server": "TIME_WAIT"}
    conn.gone, conn.gone_why = "CLOSED", "nothing expected to be freed"


def half_close(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "half_close")
    c.sendall(REQUEST)
    c.shutdown(socket.SHUT_WR)
    read_to_eof(s)
    for _ in range(CHUNKS):
        s.sendall(CHUNK)
        time.sleep(0.01)
    ctx.look(conn, "server sent its data, before its close()")
    s.close()
    read_to_eof(c)
    c.close()
    sent = CHUNKS * len(CHUNK)
    conn.did = [
        "client sent the request, shutdown(SHUT_WR)",
        f"server read to EOF, then sent {CHUNKS}×{len(CHUNK)} bytes, close()",
        "client read to EOF, close()",
    ]
    conn.expect = closed(
        closer="client",
        close_type="half_close",
        pay=both(len(REQUEST), sent),
        half_close_bytes=sent,
    )
    conn.predict_end = {"client": "TIME_WAIT", "server": "CLOSED"}
    conn.gone, conn.gone_why = "CLOSED", PASSIVE_GONE


def _reset(
    conn: Conn, *, by: str, phase: str | None, pay: dict[str, int], close_type: str = "reset"
) -> None:
    conn.expect = reset(by=by, phase=phase, pay=pay, close_type=close_type)
    conn.predict_end = {"client": "RESET", "server": "RESET"}
    conn.gone, conn.gone_why = "RESET", RESET_GONE


def abort_client(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "abort_client")
    exchange(c, s)
    abort(c)
    conn.errors["server"] = reset_seen(s)
    conn.did = ["request and response", "client close() with SO_LINGER {1, 0}"]
    _reset(conn, by="client", phase="established", pay=both(len(REQUEST), len(RESPONSE)))


def abort_server(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "abort_server")
    exchange(c, s)
    abort(s)
    conn.errors["client"] = reset_seen(c)
    conn.did = ["request and response", "server close() with SO_LINGER {1, 0}"]
    _reset(conn, by="server", phase="established", pay=both(len(REQUEST), len(RESPONSE)))


def close_unread(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "close_unread")
    c.sendall(REQUEST)
    # Wait for the request to arrive without reading it.
    s.recv(len(REQUEST), socket.MSG_PEEK)
    s.close()
    conn.errors["client"] = reset_seen(c)
    conn.did = ["client sent the request", "server close() without reading it"]
    _reset(conn, by="server", phase="established", pay=both(len(REQUEST), 0))


def data_after_close(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "data_after_close")
    exchange(c, s)
    s.close()
    read_to_eof(c)
    time.sleep(SETTLE_S)
    ctx.look(conn, "server closed, FIN acknowledged")
    c.sendall(LATE)
    conn.errors["client"] = reset_seen(c)
    conn.did = [
        "request and response",
        "server close()",
        f"client read EOF, waited {SETTLE_S} s (its ACK of the FIN went out), "
        f"then sent {len(LATE)} bytes",
    ]
    _reset(conn, by="server", phase="closing", pay=both(len(REQUEST) + len(LATE), len(RESPONSE)))
    # Sent after the client acknowledged the server's FIN (ss saw FIN-WAIT-2).
    conn.expect["half_close_bytes"] = len(LATE)


def refused(ctx: Ctx) -> None:
    c = ctx.lab.socket(ctx.lab.client, ctx.family)
    with c:
        conn = ctx.new_conn("refused")
        c.bind(conn.client)
        try:
            c.connect(conn.server)
        except ConnectionRefusedError as e:
            conn.errors["client"] = f"connect: {type(e).__name__} (errno {e.errno})"
        else:
            raise netns.LabError("connect to a port without listener succeeded")
    conn.did = ["client connect() to a port nobody listens on"]
    _reset(conn, by="server", phase=None, pay=both(0, 0), close_type="refused")


def lost_final_ack(ctx: Ctx) -> None:
    old = netns.sysctl(ctx.lab.server, "net.ipv4.tcp_rto_min_us", str(RTO_MIN_US))
    try:
        with ctx.listen() as lst:
            conn, c, s = ctx.dial(lst, "lost_final_ack")
        exchange(c, s)
        time.sleep(SETTLE_S)
        with netns.dropping(ctx.lab.server, netns.pure_ack(ctx.family, conn.client, conn.server)):
            c.close()
            read_to_eof(s)
            time.sleep(PASSIVE_DELAY_S)
            s.close()
        ctx.look(conn, "final ACK dropped")
        ctx.wait_ss(conn, lambda now: now["server"] is None)
    finally:
        netns.sysctl(ctx.lab.server, "net.ipv4.tcp_rto_min_us", old)
    conn.did = [
        "request and response",
        "client close()",
        f"server read EOF, close() {PASSIVE_DELAY_S} s later",
        "the client's ACK of the server's FIN dropped once at the server's veth "
        "ingress (tc bpf filter), after the capture point",
        f"server namespace: tcp_rto_min_us={RTO_MIN_US}",
    ]
    _graceful(conn, closer="client")


def bind_without_reuseaddr(ctx: Ctx, client: tuple[str, int]) -> str:
    """What bind() says about a port held by a TIME_WAIT socket, without SO_REUSEADDR."""
    with ctx.lab.socket(ctx.lab.client, ctx.family) as probe:
        try:
            probe.bind(client)
        except OSError as e:
            return f"bind without SO_REUSEADDR: {errno.errorcode[e.errno or 0]}"
    return "bind without SO_REUSEADDR: allowed"


def reuse_client_time_wait(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        first, c, s = ctx.dial(lst, "reuse_client_time_wait", reuse=True)
        exchange(c, s)
        c.close()
        read_to_eof(s)
        s.close()
        first.ss_before_reuse = ctx.wait_ss(first, lambda now: now["server"] is None)
        first.errors["client"] = bind_without_reuseaddr(ctx, first.client)
        second, c, s = ctx.dial(lst, "reuse_client_time_wait", reuse=True)
    exchange(c, s)
    c.close()
    read_to_eof(s)
    s.close()
    for conn in (first, second):
        conn.did = [
            "client bound its port with SO_REUSEADDR (default sysctls: tcp_tw_reuse=2)",
            "request and response",
            "client close()",
            "server close() as soon as it read EOF",
        ]
        _graceful(conn, closer="client")
    first.did.append(
        "the client's next connect() from the same port took the 4-tuple "
        "over while this connection was in TIME_WAIT"
    )
    second.expect["reused_previous_stream"] = first.stream


def reuse_server_time_wait(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        first, c, s = ctx.dial(lst, "reuse_server_time_wait", reuse=True)
        exchange(c, s)
        s.close()
        read_to_eof(c)
        c.close()
        first.ss_before_reuse = ctx.wait_ss(first, lambda now: now["client"] is None)
        second, c, s = ctx.dial(lst, "reuse_server_time_wait", reuse=True)
    exchange(c, s)
    s.close()
    read_to_eof(c)
    c.close()
    for conn in (first, second):
        conn.did = [
            "request and response",
            "server close()",
            "client close() as soon as it read EOF",
        ]
        _graceful(conn, closer="server")
    first.did.append(
        "the client connected again from the same port: its SYN met the server's TIME_WAIT"
    )
    second.expect["reused_previous_stream"] = first.stream


def close_wait(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "close_wait")
    exchange(c, s)
    c.close()
    read_to_eof(s)
    time.sleep(SETTLE_S)
    ctx.look(conn, "server read EOF")
    ctx.held.append(s)
    conn.did = [
        "request and response",
        "client close()",
        "server read EOF and keeps its socket open past the end of the capture",
    ]
    conn.expect = closed(closer="client", close_type="close_wait")
    conn.expect.update(final_ack_seen=None, stuck=False)
    conn.predict_end = {"client": "FIN_WAIT_2", "server": "CLOSE_WAIT"}
    conn.gone, conn.gone_why = "CLOSED", "nothing expected to be freed"


def idle_open(ctx: Ctx) -> None:
    with ctx.listen() as lst:
        conn, c, s = ctx.dial(lst, "idle_open")
    exchange(c, s)
    ctx.look(conn, "after the exchange")
    ctx.held += [c, s]
    conn.did = ["request and response", "both keep their sockets open past the end"]
    conn.expect = closed(closer="", close_type="open")
    conn.expect.update(active_closer=None, final_ack_seen=None)
    conn.predict_end = {"client": "ESTABLISHED", "server": "ESTABLISHED"}
    conn.gone, conn.gone_why = "CLOSED", "nothing expected to be freed"


SCENARIOS: tuple[Callable[[Ctx], None], ...] = (
    graceful_client_first,
    graceful_server_first,
    close_on_eof,
    simultaneous,
    half_close,
    abort_client,
    abort_server,
    close_unread,
    data_after_close,
    refused,
    close_wait,
    idle_open,
    reuse_client_time_wait,
    reuse_server_time_wait,
    lost_final_ack,
)


def run_all(ctx: Ctx) -> None:
    for i, scenario in enumerate(SCENARIOS, start=1):
        ctx.index = i
        scenario(ctx)
        time.sleep(SETTLE_S)
