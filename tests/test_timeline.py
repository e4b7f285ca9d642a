"""The timeline's bucketed series: counts, re-bucketing, TIME_WAIT held, resets, memory bound."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fintrace import timeline as tl
from fintrace.model import (
    CloseType,
    Connection,
    Endpoint,
    ResetPhase,
    Role,
    SideCounts,
    SideFrames,
    SideStates,
    State,
    Transition,
)
from fintrace.timeline import Timeline

if TYPE_CHECKING:
    import pytest

#: A whole second, so bucket boundaries fall on round offsets from it.
T = 1_700_000_000.0


def conn(
    first: float,
    last: float | None = None,
    *,
    stream: int = 0,
    close_type: CloseType = CloseType.GRACEFUL,
    client: tuple[str, int] = ("10.0.0.1", 40000),
    server: tuple[str, int] = ("10.0.0.2", 80),
    transitions: tuple[tuple[Role, State, float], ...] = (),
    **fields: Any,
) -> Connection:
    """A connection record with times as offsets from T; other fields as given or neutral."""
    values: dict[str, Any] = {
        "stream": stream,
        "capture": "t.pcap",
        "client": Endpoint(*client),
        "server": Endpoint(*server),
        "roles_inferred": False,
        "first_frame": 1,
        "last_frame": 2,
        "first_ts": T + first,
        "last_ts": T + (first if last is None else last),
        "packets": 2,
        "payload_bytes": SideCounts(0, 0),
        "close_type": close_type,
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
        "end_state": SideStates(None, None),
        "transitions": tuple(Transition(side, state, 1, T + ts) for side, state, ts in transitions),
        "reused_tuple": None,
        "anomalies": (),
        "community_id": "1:x",
        "zeek_conn_state": "SF",
        "last_capture": "t.pcap",
        "files": (),
        "rst_lost_bytes": 0,
    }
    values.update(fields)
    return Connection(**values)


def test_ends_fall_in_millisecond_buckets_while_the_span_is_short() -> None:
    t = Timeline()
    t.add(conn(0.0, 0.0005))
    t.add(conn(0.0, 0.0015, close_type=CloseType.RESET))
    t.add(conn(0.0012, 0.0019))
    s = t.series()
    assert (s.start, s.width_s, s.buckets) == (T, 0.001, 2)
    # 0.5 ms in [0, 1 ms); 1.5 and 1.9 ms in [1, 2 ms).
    assert s.ends == {"reset": (0, 1), "graceful": (1, 1)}


def test_series_lists_close_types_in_the_contract_order() -> None:
    t = Timeline()
    for kind in (CloseType.ATTEMPT, CloseType.GRACEFUL, CloseType.REFUSED):
        t.add(conn(0.0, close_type=kind))
    assert list(t.series().ends) == ["refused", "graceful", "attempt"]


def test_width_steps_up_the_ladder_and_merges_buckets_exactly() -> None:
    t = Timeline(max_buckets=10)
    t.add(conn(0.0005))
    t.add(conn(0.0095))
    s = t.series()
    assert (s.width_s, s.buckets, s.ends["graceful"]) == (0.001, 10, (1,) + (0,) * 8 + (1,))
    t.add(conn(0.0105))  # 11 one-millisecond buckets: too many, so 2 ms ones (0..5)
    s = t.series()
    assert (s.width_s, s.buckets, s.ends["graceful"]) == (0.002, 6, (1, 0, 0, 0, 1, 1))
    # At 150 ms, 2 ms needs 76 buckets and 10 ms 16; 20 ms needs 8 (0..7).
    t.add(conn(0.150))
    s = t.series()
    assert (s.start, s.width_s, s.buckets) == (T, 0.02, 8)
    assert s.ends["graceful"] == (3, 0, 0, 0, 0, 0, 0, 1)


def test_an_earlier_connection_arriving_late_extends_the_span_backwards() -> None:
    t = Timeline()
    t.add(conn(10.0005, 10.0005))
    t.add(conn(10.0, 10.0003))
    s = t.series()
    assert (s.start, s.width_s, s.buckets) == (T + 10, 0.001, 1)
    assert s.ends["graceful"] == (2,)


@settings(max_examples=60, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 5_000_000_000), min_size=1, max_size=60),
    seed=st.integers(0, 1000),
)
def test_any_arrival_order_gives_the_counts_of_bucketing_at_the_final_width(
    offsets: list[int], seed: int
) -> None:
    # Offsets in microseconds, up to 5000 s: many steps of the ladder.
    conns = [conn(us / 1e6) for us in offsets]
    random.Random(seed).shuffle(conns)
    t = Timeline(max_buckets=50)
    for c in conns:
        t.add(c)
    s = t.series()
    assert s.buckets <= 50
    width_us = round(s.width_s * 1e6)
    base = round(T * 1e6)
    lo = (base + min(offsets)) // width_us
    expected = [0] * s.buckets
    for us in offsets:
        expected[(base + us) // width_us - lo] += 1
    assert s.ends["graceful"] == tuple(expected)
    assert sum(expected) == len(offsets)


def test_memory_stays_within_the_bucket_bound_over_many_connections() -> None:
    t = Timeline(msl=30.0, max_buckets=20)
    rng = random.Random(1)
    hosts = [f"10.0.{i}.1" for i in range(5)]
    for i in range(5000):
        start = rng.uniform(0, 86_400)
        end = start + rng.uniform(0, 5)
        t.add(
            conn(
                start,
                end,
                stream=i,
                client=(rng.choice(hosts), 40000),
                close_type=CloseType.GRACEFUL,
                time_wait=Role.CLIENT,
                transitions=((Role.CLIENT, State.TIME_WAIT, end),),
            )
        )
    s = t.series()
    assert s.buckets <= 20
    for group in (t.ends, t.tw_in, t.tw_out):
        for buckets in group.values():
            assert len(buckets) <= 21
    assert sum(s.ends["graceful"]) == 5000


def test_time_wait_held_at_the_end_of_each_bucket_lasts_two_msl() -> None:
    t = Timeline(msl=1.0)  # TIME_WAIT lasts 2 s
    t.add(conn(0.0, 100.0, close_type=CloseType.OPEN))  # spans 0..100 s: 1 s buckets
    for ts in (10.5, 10.7, 50.2):
        t.add(
            conn(ts - 1, ts, time_wait=Role.CLIENT,
                 transitions=((Role.CLIENT, State.TIME_WAIT, ts),))
        )  # fmt: skip
    s = t.series()
    assert (s.width_s, s.buckets) == (1.0, 101)
    held = s.time_wait["10.0.0.1"]
    # Bucket b ends at b + 1 s: the entries at 10.5 and 10.7 are held at 11 and
    # 12 s, gone by 13 s (they end at 12.5 and 12.7); the one at 50.2 at 51 and 52 s.
    assert [b for b, n in enumerate(held) if n] == [10, 11, 50, 51]
    assert (held[10], held[11], held[12], held[50], held[51]) == (2, 2, 0, 1, 1)


def test_time_wait_on_both_sides_counts_for_both_hosts() -> None:
    t = Timeline(msl=30.0)
    t.add(
        conn(0.0, 0.5, close_type=CloseType.SIMULTANEOUS, time_wait=Role.BOTH,
             transitions=((Role.CLIENT, State.TIME_WAIT, 0.4), (Role.SERVER, State.TIME_WAIT, 0.5)))
    )  # fmt: skip
    s = t.series()
    assert s.time_wait["10.0.0.1"][-1] == 1
    assert s.time_wait["10.0.0.2"][-1] == 1


def test_past_the_host_limit_the_host_with_fewest_time_waits_gives_its_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tl, "MAX_HOSTS", 2)
    t = Timeline()
    # .1 holds two and .3 one when .4 comes: .4 takes .3's place; then .5 takes
    # .4's. .1, the busiest, is followed throughout.
    for i, ip in enumerate(("10.0.0.1", "10.0.0.3", "10.0.0.1", "10.0.0.4", "10.0.0.5")):
        t.add(
            conn(float(i), client=(ip, 40000), time_wait=Role.CLIENT,
                 transitions=((Role.CLIENT, State.TIME_WAIT, float(i)),))
        )  # fmt: skip
    s = t.series()
    assert set(s.time_wait) == {"10.0.0.1", "10.0.0.5"}
    assert s.time_wait["10.0.0.1"][-1] == 2  # entries at 0 and 2 s, both within 60 s
    assert s.time_wait_untracked == 2


def test_the_least_recently_counted_of_the_quietest_hosts_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tl, "MAX_HOSTS", 3)
    t = Timeline()
    # .1, .2 and .3 hold one each, then .2 a second: of .1 and .3, .1 was
    # counted longer ago, so .4 takes its place.
    for i, ip in enumerate(("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.2", "10.0.0.4")):
        t.add(
            conn(float(i), client=(ip, 40000), time_wait=Role.CLIENT,
                 transitions=((Role.CLIENT, State.TIME_WAIT, float(i)),))
        )  # fmt: skip
    s = t.series()
    assert set(s.time_wait) == {"10.0.0.2", "10.0.0.3", "10.0.0.4"}
    assert s.time_wait_untracked == 1


def test_resets_are_placed_at_the_rst_and_keyed_by_sender_and_phase() -> None:
    t = Timeline()
    # A RST at 1.5 ms, then a stray segment at 9.5 ms: the reset counts at 1.5 ms.
    t.add(
        conn(0.0, 0.0095, close_type=CloseType.RESET, reset_by=Role.SERVER,
             reset_phase=ResetPhase.ESTABLISHED,
             transitions=((Role.SERVER, State.RESET, 0.0015), (Role.CLIENT, State.RESET, 0.0015)))
    )  # fmt: skip
    t.add(
        conn(0.0, 0.0002, close_type=CloseType.REFUSED, reset_by=Role.SERVER,
             transitions=((Role.SERVER, State.RESET, 0.0002),))
    )  # fmt: skip
    t.add(
        conn(0.003, 0.004, close_type=CloseType.RESET, reset_by=Role.CLIENT,
             reset_phase=ResetPhase.CLOSING,
             transitions=((Role.CLIENT, State.RESET, 0.004),))
    )  # fmt: skip
    s = t.series()
    assert s.buckets == 10
    assert list(s.resets) == ["client/closing", "server/established", "server/refused"]
    assert s.resets["server/established"][1] == 1
    assert s.resets["server/refused"][0] == 1
    assert s.resets["client/closing"][4] == 1
    assert sum(map(sum, s.resets.values())) == 3


def test_an_empty_timeline_has_no_buckets() -> None:
    s = Timeline().series()
    assert (s.buckets, s.ends, s.resets, s.time_wait) == (0, {}, {}, {})
