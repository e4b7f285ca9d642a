"""The summary's arithmetic, on hand-built connections with hand-computed answers."""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest

from fintrace.aggregate import MAX_EXAMPLES, AggregateOptions, Aggregator, peak_overlap, percentile
from fintrace.model import (
    CloseType,
    Connection,
    Endpoint,
    FileSpan,
    ResetPhase,
    Reuse,
    Role,
    SideCounts,
    SideFrames,
    SideStates,
    State,
    Transition,
)

CAP = "x.pcap"


def conn(stream: int, **kw: Any) -> Connection:
    """A connection with harmless defaults; tests set only what they are about."""
    fields: dict[str, Any] = {
        "stream": stream,
        "capture": CAP,
        "client": Endpoint("10.0.0.1", 40000 + stream),
        "server": Endpoint("10.0.0.2", 80),
        "roles_inferred": False,
        "first_frame": 1,
        "last_frame": 2,
        "first_ts": 0.0,
        "last_ts": 1.0,
        "packets": 2,
        "payload_bytes": SideCounts(0, 0),
        "close_type": CloseType.OPEN,
        "active_closer": None,
        "reset_by": None,
        "reset_phase": None,
        "time_wait": None,
        "fin_frames": SideFrames(None, None),
        "rst_frame": None,
        "half_close_bytes": 0,
        "close_wait_s": None,
        "stuck": False,
        "final_ack_seen": None,
        "fin_retransmits": 0,
        "end_state": SideStates(State.ESTABLISHED, State.ESTABLISHED),
        "transitions": (),
        "reused_tuple": None,
        "anomalies": (),
        "community_id": "",
        "zeek_conn_state": "",
        "last_capture": CAP,
        "files": (FileSpan(CAP, stream, 1, 2, 2),),
        "rst_lost_bytes": 0,
    }
    fields.update(kw)
    return Connection(**fields)


def time_wait(stream: int, side: Role, ts: float, **kw: Any) -> Connection:
    """A close in which ``side`` entered TIME_WAIT at ``ts``."""
    return conn(
        stream,
        close_type=CloseType.GRACEFUL,
        active_closer=side,
        time_wait=side,
        close_wait_s=0.001,
        transitions=(Transition(side, State.TIME_WAIT, 9, ts),),
        **kw,
    )


def summary(*conns: Connection, **options: Any) -> dict[str, Any]:
    agg = Aggregator(AggregateOptions(**options))
    for c in conns:
        agg.add(c)
    return agg.summary()


# -- percentiles and overlaps ------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        (list(range(1, 21)), 50, 10),  # rank ceil(0.5 * 20) = 10
        (list(range(1, 21)), 95, 19),  # rank ceil(0.95 * 20) = 19
        (list(range(1, 11)), 95, 10),  # rank ceil(9.5) = 10
        ([1.0, 2.0], 50, 1.0),
        ([1.0, 2.0], 95, 2.0),
        ([7.0], 95, 7.0),
        ([], 50, 0.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_peak_overlap_counts_half_open_windows() -> None:
    # Windows of 60 s: [0,60) [10,70) [20,80) [59.9,119.9) [60,120) [130,190).
    # At 59.9 four are open (0, 10, 20, 59.9); at 60 the first has closed and
    # 60 opens: four again, so the peak is first reached at 59.9. At 130 only one.
    assert peak_overlap([60, 0, 130, 20, 59.9, 10], 60) == (4, 59.9)


def test_peak_overlap_window_ending_when_the_next_starts() -> None:
    assert peak_overlap([0.0, 60.0], 60) == (1, 0.0)
    assert peak_overlap([0.0, 59.999], 60) == (2, 59.999)
    assert peak_overlap([], 60) == (0, 0.0)


# -- TIME_WAIT -------------------------------------------------------------------


def test_time_wait_peak_per_host() -> None:
    # Client 10.0.0.1 enters TIME_WAIT at 0, 10, 20 and 70: with 2×MSL = 60 s,
    # three overlap at 20 (0-60, 10-70, 20-80); at 70 the one from 10 has ended.
    s = summary(*(time_wait(i, Role.CLIENT, t) for i, t in enumerate([0.0, 10.0, 20.0, 70.0])))
    assert s["time_wait"]["by_host"] == [
        {"host": "10.0.0.1", "connections": 4, "peak": 3, "peak_ts": 20.0}
    ]
    assert s["time_wait"]["holders"] == {"client": 4, "server": 0, "both": 0}
    assert s["time_wait"]["window_s"] == 60.0


def test_time_wait_window_follows_msl() -> None:
    # With MSL 5 s the windows are 10 s long: none of 0, 10, 20, 70 overlap.
    s = summary(
        *(time_wait(i, Role.CLIENT, t) for i, t in enumerate([0.0, 10.0, 20.0, 70.0])), msl=5
    )
    assert s["time_wait"]["by_host"][0]["peak"] == 1


def test_port_exhaustion_counts_only_the_clients_time_wait() -> None:
    conns = [time_wait(i, Role.CLIENT, float(i)) for i in range(5)]
    # The server's TIME_WAIT on the same triple costs the client no port.
    conns += [time_wait(10 + i, Role.SERVER, float(i)) for i in range(3)]
    s = summary(*conns, ephemeral_ports=20)
    (triple,) = s["time_wait"]["by_tuple"]
    assert (triple["client_ip"], triple["server_ip"], triple["server_port"]) == (
        "10.0.0.1",
        "10.0.0.2",
        80,
    )
    assert triple["peak"] == 5
    assert triple["share_of_ephemeral"] == 5 / 20
    hosts = {h["host"]: h["peak"] for h in s["time_wait"]["by_host"]}
    assert hosts == {"10.0.0.1": 5, "10.0.0.2": 3}


def test_both_sides_in_time_wait_count_for_both_hosts() -> None:
    c = conn(
        0,
        close_type=CloseType.SIMULTANEOUS,
        active_closer=Role.BOTH,
        time_wait=Role.BOTH,
        transitions=(
            Transition(Role.CLIENT, State.TIME_WAIT, 8, 5.0),
            Transition(Role.SERVER, State.TIME_WAIT, 9, 5.5),
        ),
    )
    s = summary(c)
    assert {h["host"]: h["peak_ts"] for h in s["time_wait"]["by_host"]} == {
        "10.0.0.1": 5.0,
        "10.0.0.2": 5.5,
    }
    assert s["time_wait"]["by_tuple"][0]["peak_ts"] == 5.0


def test_reuse_within_two_msl_only() -> None:
    s = summary(
        conn(1, reused_tuple=Reuse(0, 12.5)),
        conn(2, reused_tuple=Reuse(1, 3.25), close_type=CloseType.REFUSED, reset_by=Role.SERVER),
        conn(3, reused_tuple=Reuse(2, 60.0)),  # 2×MSL exactly: old enough
    )
    reused = s["time_wait"]["reused_within_2msl"]
    assert reused["count"] == 2
    assert reused["min_gap_s"] == 3.25
    assert reused["failed"] == 1
    assert reused["streams"] == {CAP: [1, 2]}


# -- CLOSE_WAIT ------------------------------------------------------------------


def test_stuck_close_wait_by_service_with_oldest() -> None:
    def cw(stream: int, wait: float, *, stuck: bool, port: int = 5432) -> Connection:
        return conn(
            stream,
            server=Endpoint("10.0.0.9", port),
            close_type=CloseType.CLOSE_WAIT,
            active_closer=Role.CLIENT,
            close_wait_s=wait,
            stuck=stuck,
        )

    s = summary(
        cw(0, 70.0, stuck=True),
        cw(1, 95.5, stuck=True),
        cw(2, 5.0, stuck=False),
        cw(3, 61.0, stuck=True, port=6379),
    )
    stuck = s["close_wait"]["stuck_by_service"]
    assert [(d["service"], d["count"], d["oldest_s"], d["open"]) for d in stuck] == [
        ("10.0.0.9:5432", 2, 95.5, 1),
        ("10.0.0.9:6379", 1, 61.0, 0),
    ]
    assert stuck[0]["streams"] == {CAP: [0, 1]}
    # The active closers wait in FIN_WAIT_2: all four from 10.0.0.1, three of
    # them at least the stuck threshold (60 s), the longest 95.5 s.
    assert s["close_wait"]["fin_wait_2_by_host"] == {"10.0.0.1": 4}
    (w,) = s["close_wait"]["fin_wait_2"]
    assert (w["host"], w["count"], w["longest_s"]) == ("10.0.0.1", 3, 95.5)
    assert w["peers"] == {"10.0.0.9:5432": 2, "10.0.0.9:6379": 1}


def test_close_spread_per_service() -> None:
    waits = [0.004, 0.002, 3.0, 0.001, 2.0]
    conns = [
        conn(i, close_type=CloseType.GRACEFUL, active_closer=Role.CLIENT, close_wait_s=w)
        for i, w in enumerate(waits)
    ]
    # The server closing first makes the client the passive side: named by
    # its address and the service it talks to, not its ephemeral port.
    conns.append(
        conn(9, close_type=CloseType.PIGGYBACKED, active_closer=Role.SERVER, close_wait_s=0.0)
    )
    s = summary(*conns)
    by = {d["service"]: d for d in s["close_wait"]["by_service"]}
    svc = by["10.0.0.2:80"]
    # sorted: 0.001 0.002 0.004 2.0 3.0; p50 rank 3, p95 rank ceil(4.75) = 5.
    assert (svc["count"], svc["p50_s"], svc["p95_s"], svc["max_s"]) == (5, 0.004, 3.0, 3.0)
    assert svc["slow"] == 2
    assert svc["slow_streams"] == {CAP: [2, 4]}
    client = by["10.0.0.1 (client of 10.0.0.2:80)"]
    assert (client["role"], client["port"], client["peer"]) == ("client", None, "10.0.0.2:80")


# -- resets ----------------------------------------------------------------------


def test_resets_by_sender_phase_and_bytes_lost() -> None:
    lb = Endpoint("10.0.0.5", 443)
    s = summary(
        conn(0, server=lb, close_type=CloseType.RESET, reset_by=Role.SERVER,
             reset_phase=ResetPhase.ESTABLISHED, rst_lost_bytes=517),
        conn(1, server=lb, close_type=CloseType.RESET, reset_by=Role.SERVER,
             reset_phase=ResetPhase.ESTABLISHED, rst_lost_bytes=1400),
        conn(2, server=lb, close_type=CloseType.RESET, reset_by=Role.SERVER,
             reset_phase=ResetPhase.CLOSING),
        conn(3, close_type=CloseType.RESET, reset_by=Role.CLIENT,
             reset_phase=ResetPhase.CLOSED),
        conn(4, close_type=CloseType.REFUSED, reset_by=Role.SERVER),
    )  # fmt: skip
    r = s["resets"]
    assert r["total"] == 5
    assert r["by_sender"] == {
        "client": {"closed": 1},
        "server": {"established": 2, "closing": 1, "refused": 1},
    }
    hosts = {h["host"]: (h["role"], h["count"], h["phases"]) for h in r["by_host"]}
    assert hosts == {
        "10.0.0.5": ("server", 3, {"established": 2, "closing": 1}),
        "10.0.0.1": ("client", 1, {"closed": 1}),
        "10.0.0.2": ("server", 1, {"refused": 1}),
    }
    assert r["lost_data"]["count"] == 2
    assert r["lost_data"]["bytes"] == 517 + 1400
    assert r["lost_data"]["by_host"] == [{"host": "10.0.0.5", "count": 2, "bytes": 1917}]


def test_examples_are_bounded_and_keep_the_most_telling() -> None:
    n = MAX_EXAMPLES + 15
    conns = [
        conn(i, close_type=CloseType.RESET, reset_by=Role.CLIENT,
             reset_phase=ResetPhase.ESTABLISHED, rst_lost_bytes=i + 1)
        for i in range(n)
    ]  # fmt: skip
    lost = summary(*conns)["resets"]["lost_data"]
    assert lost["count"] == n
    # The most bytes lost: the last MAX_EXAMPLES streams.
    assert lost["streams"] == {CAP: list(range(n - MAX_EXAMPLES, n))}


def test_attempts_and_unacked_fins() -> None:
    s = summary(
        conn(0, close_type=CloseType.ATTEMPT, server=Endpoint("10.0.0.7", 443)),
        conn(1, close_type=CloseType.ATTEMPT, server=Endpoint("10.0.0.7", 443)),
        conn(2, close_type=CloseType.UNACKED_FIN, active_closer=Role.CLIENT),
    )
    assert s["attempts"] == {
        "count": 2,
        "by_service": [{"service": "10.0.0.7:443", "count": 2, "streams": {CAP: [0, 1]}}],
    }
    assert s["unacked_fin"] == {"count": 1, "streams": {CAP: [2]}}


def test_close_types_and_closers_add_up() -> None:
    s = summary(
        conn(0, close_type=CloseType.GRACEFUL, active_closer=Role.CLIENT, close_wait_s=0.0),
        conn(1, close_type=CloseType.GRACEFUL, active_closer=Role.SERVER, close_wait_s=0.0),
        conn(2, close_type=CloseType.SIMULTANEOUS, active_closer=Role.BOTH),
        conn(3),
    )
    assert s["connections"] == 4
    assert s["close_types"]["graceful"] == {"count": 2, "share": 0.5}
    assert s["close_types"]["open"] == {"count": 1, "share": 0.25}
    assert s["active_closer"] == {"client": 1, "server": 1, "both": 1, "none": 1}


def test_events_group_each_items_values_in_order() -> None:
    from fintrace.aggregate import _Addresses, _Events

    addrs = _Addresses()
    ev = _Events()
    added = [
        (("10.0.0.1", "10.0.0.9", 80), 5.0),
        (("10.0.0.9", None, 80), 1.0),  # one address: a server's service
        (("10.0.0.1", "10.0.0.9", 443), 2.0),  # another port
        (("10.0.0.1", "10.0.0.9", 80), 3.0),
        (("10.0.0.9", "10.0.0.1", 80), 4.0),  # the addresses the other way round
        (("2001:db8::1", "10.0.0.9", 80), 7.0),
        (("10.0.0.1", "10.0.0.9", 80), 6.0),
        (("10.0.0.9", None, 80), 0.5),
    ]
    for item, value in added:
        ev.add(addrs, item, value)
    assert len(ev) == len(added)
    got = dict(ev.items(addrs))
    assert got == {
        ("10.0.0.1", "10.0.0.9", 80): [5.0, 3.0, 6.0],
        ("10.0.0.9", None, 80): [1.0, 0.5],
        ("10.0.0.1", "10.0.0.9", 443): [2.0],
        ("10.0.0.9", "10.0.0.1", 80): [4.0],
        ("2001:db8::1", "10.0.0.9", 80): [7.0],
    }
    assert addrs.names == ["10.0.0.1", "10.0.0.9", "2001:db8::1"]


def test_events_keep_every_value_across_batches() -> None:
    # _Events holds its latest values in byte buffers and moves them into its
    # arrays every _BATCH values: across several batches, after an items()
    # that moved a part batch, and through pickle (how --jobs workers send
    # theirs) with a part batch still in the buffers, nothing is lost or
    # reordered.
    from fintrace.aggregate import _BATCH, _Addresses, _Events

    addrs = _Addresses()
    ev = _Events()
    want: dict[tuple[str, str | None, int], list[float]] = {}
    n = 2 * _BATCH + 7
    for i in range(n):
        item = (f"10.0.{i % 3}.1", None if i % 5 == 0 else "10.9.0.9", 1024 + i % 7)
        value = i * 0.5
        ev.add(addrs, item, value)
        want.setdefault(item, []).append(value)
        if i == _BATCH + 3:
            assert len(ev) == i + 1
            assert sum(len(v) for _, v in ev.items(addrs)) == i + 1
    assert len(ev) == n
    sent = pickle.loads(pickle.dumps(ev))
    assert len(sent) == n
    assert dict(sent.items(addrs)) == want
    assert dict(ev.items(addrs)) == want


def test_examples_keep_the_highest_scores_the_earliest_first_on_ties() -> None:
    # Against a sort done here: the MAX_EXAMPLES highest scores, and among
    # equal scores the earliest added; scores repeat (ties at the heap's edge)
    # and arrive in no order.
    from fintrace.aggregate import _Examples

    rng = random.Random(7)
    for trial in range(200):
        ex = _Examples()
        added = [(float(rng.choice([0, 1, 2, 3, 5, 8]) * rng.choice([1, 0.5])), i)
                 for i in range(rng.randrange(0, 3 * MAX_EXAMPLES))]  # fmt: skip
        for score, i in added:
            ex.add(CAP, i, score)
        want = sorted(added, key=lambda si: (-si[0], si[1]))[:MAX_EXAMPLES]
        got = ex.as_dict().get(CAP, [])
        assert got == sorted(i for _, i in want), trial
        assert ex.total == len(added)


def test_a_hosts_reset_phases_are_listed_highest_count_first() -> None:
    # Ties keep the order first seen (as Counter.most_common lists them).
    lb = Endpoint("10.0.0.5", 443)
    phases = [ResetPhase.CLOSING, ResetPhase.HANDSHAKE, ResetPhase.ESTABLISHED,
              ResetPhase.ESTABLISHED, ResetPhase.CLOSED]  # fmt: skip
    s = summary(
        *(conn(i, server=lb, close_type=CloseType.RESET, reset_by=Role.SERVER, reset_phase=p)
          for i, p in enumerate(phases))
    )  # fmt: skip
    (host,) = s["resets"]["by_host"]
    assert list(host["phases"].items()) == [
        ("established", 2), ("closing", 1), ("handshake", 1), ("closed", 1),
    ]  # fmt: skip
