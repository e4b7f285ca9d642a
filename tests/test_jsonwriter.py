"""render/jsonwriter writes what orjson writes of connection_dict, byte for byte.

Compiled, the JSON renderers write each connection with
:func:`~fintrace.render.jsonwriter.write_connection` instead of building its
dictionary for orjson. The oracle is orjson itself: on every capture, on
records holding every kind of value (integers on either side of the machine
range, every float orjson writes, strings that need escaping, absent values),
and through the renderers.
"""

from __future__ import annotations

import io
import math
import random
import tracemalloc

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fintrace.errors import FintraceError
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
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.render.jsonout import JsonLinesRenderer, JsonRenderer, connection_dict
from fintrace.render.jsonwriter import connection_bytes, number_bytes

from conftest import CAPTURES, capture_files, corpus_files

DEMO = CAPTURES / "demo.pcap"


def orjson_bytes(c: Connection) -> bytes:
    return orjson.dumps(connection_dict(c))


def test_every_connection_of_every_capture_is_written_as_orjson_writes_it() -> None:
    paths = capture_files() + corpus_files()
    written = 0
    for path in paths:
        try:
            run = analyze(AnalyzeOptions(paths=(str(path),)))
            conns = list(run.connections())
        except FintraceError:  # a capture fintrace refuses is bad_input's to test
            continue
        for c in conns:
            assert connection_bytes(c) == orjson_bytes(c), (path.name, c.stream)
            written += 1
    assert written > 1000


def test_the_renderers_write_orjson_bytes() -> None:
    def rendered(renderer_type: type[JsonLinesRenderer] | type[JsonRenderer]) -> bytes:
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        run = analyze(AnalyzeOptions(paths=(str(DEMO),)))
        renderer = renderer_type(out)
        renderer.begin(run)
        conns = []
        for c in run.connections():
            renderer.connection(c)
            conns.append(c)
        renderer.end(run)
        out.flush()
        data = out.buffer.getvalue()  # type: ignore[attr-defined]
        assert len(conns) > 5
        want = [orjson_bytes(c) for c in conns]
        if renderer_type is JsonLinesRenderer:
            assert data == b"".join(w + b"\n" for w in want)
        else:
            head, _, rest = data.partition(b'"connections":[\n')
            assert head.startswith(b"{")
            assert rest.startswith(b",\n".join(want) + b"\n],")
        return data

    rendered(JsonLinesRenderer)
    rendered(JsonRenderer)


# -- records of every kind of value ---------------------------------------------------------

#: Integers on both sides of each edge the writer has: one digit, the largest
#: written digit by digit (2**62 - 1), the 64-bit ones orjson writes, and
#: negative ones.
ints = st.one_of(
    st.integers(0, 20),
    st.integers(0, 2**62 + 10),
    st.sampled_from([2**62 - 1, 2**62, 2**63 - 1, 2**64 - 1, -1, -(2**63), 10**18]),
    st.integers(-(2**63), 2**64 - 1),
)
#: Every float: timestamps, durations, 0.0 and -0.0, exponents, inf and NaN
#: (orjson writes null).
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(1.6e9, 1.8e9),
    st.sampled_from([0.0, -0.0, 1e-7, 1e16, 1e-5, 123456789.000001, math.inf, math.nan]),
)
texts = st.one_of(st.text(), st.sampled_from(["10.0.0.1", 'a"b\\c', "\x00\x1f\u2028", "café"]))


def opt(s: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.none(), s)


@st.composite
def connections(draw: st.DrawFn) -> Connection:
    first_ts = draw(floats)
    last_ts = draw(st.one_of(floats, st.just(first_ts)))
    # A change's time is often the first or last packet's, or the one before.
    ts = st.one_of(floats, st.sampled_from([first_ts, last_ts, 0.0, -0.0]))
    transitions = draw(
        st.lists(
            st.builds(
                Transition, st.sampled_from(list(Role)), st.sampled_from(list(State)), ints, ts
            ),
            max_size=8,
        )
    )
    files = draw(st.lists(st.builds(FileSpan, texts, ints, ints, ints, ints), min_size=1))
    return Connection(
        draw(ints),
        draw(texts),
        Endpoint(draw(texts), draw(ints)),
        Endpoint(draw(texts), draw(ints)),
        draw(st.booleans()),
        draw(ints),
        draw(ints),
        first_ts,
        last_ts,
        draw(ints),
        SideCounts(draw(ints), draw(ints)),
        draw(st.sampled_from(list(CloseType))),
        draw(opt(st.sampled_from(list(Role)))),  # type: ignore[arg-type]
        draw(opt(st.sampled_from(list(Role)))),  # type: ignore[arg-type]
        draw(opt(st.sampled_from(list(ResetPhase)))),  # type: ignore[arg-type]
        draw(opt(st.sampled_from(list(Role)))),  # type: ignore[arg-type]
        SideFrames(draw(opt(ints)), draw(opt(ints))),  # type: ignore[arg-type]
        draw(opt(ints)),  # type: ignore[arg-type]
        draw(ints),
        draw(opt(floats)),  # type: ignore[arg-type]
        draw(st.booleans()),
        draw(opt(st.booleans())),  # type: ignore[arg-type]
        draw(ints),
        SideStates(
            draw(opt(st.sampled_from(list(State)))),  # type: ignore[arg-type]
            draw(opt(st.sampled_from(list(State)))),  # type: ignore[arg-type]
        ),
        tuple(transitions),
        draw(opt(st.builds(Reuse, ints, floats))),  # type: ignore[arg-type]
        tuple(draw(st.lists(texts, max_size=3))),
        draw(texts),
        draw(texts),
        draw(texts),
        tuple(files),
        draw(ints),
    )


@settings(max_examples=400, deadline=None)
@given(connections())
def test_any_record_is_written_as_orjson_writes_it(c: Connection) -> None:
    try:
        want = orjson_bytes(c)
    except orjson.JSONEncodeError as exc:
        # An integer past 64 bits: the writer says what orjson says.
        with pytest.raises(orjson.JSONEncodeError, match="Integer exceeds 64-bit range"):
            connection_bytes(c)
        assert "Integer exceeds 64-bit range" in str(exc)
        return
    assert connection_bytes(c) == want


def test_zero_and_minus_zero_are_written_apart() -> None:
    # The writer reuses the text of a change's time when it equals the first
    # packet's; 0.0 == -0.0, but orjson writes them apart.
    c = next(iter(analyze(AnalyzeOptions(paths=(str(DEMO),))).connections()))
    t = c.transitions[0]
    zero = c.replace(
        first_ts=0.0, last_ts=-0.0, transitions=(t.replace(ts=-0.0), t.replace(ts=0.0))
    )
    text = connection_bytes(zero)
    assert text == orjson_bytes(zero)
    assert b'"first_ts":0.0,"last_ts":-0.0' in text
    assert b'"ts":-0.0}' in text and b'"ts":0.0}' in text


def test_the_strings_it_keeps_cost_what_they_hold() -> None:
    # The writer keeps the JSON of each address it meets. orjson's result
    # holds on to the 4 KiB orjson wrote it in: kept as it is, 5,000
    # addresses cost 20 MB (a third of gen-1.6m's peak).
    c = next(iter(analyze(AnalyzeOptions(paths=(str(DEMO),))).connections()))
    records = [
        c.replace(client=Endpoint(f"198.18.{i // 250}.{i % 250}", 1024)) for i in range(5000)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for r in records:
            connection_bytes(r)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2_000_000, grown


def test_timestamps_are_written_as_orjson_writes_them() -> None:
    # Between 2**12 and 2**33 the writer makes a float's text itself when
    # six decimals read back as the float. Around each six-decimal value lie
    # the floats one unit either side, whose shortest text is longer, and the
    # powers of two, where the unit halves: each must come out as orjson's.
    rng = random.Random(1)
    values: list[float] = []
    for _ in range(20000):
        whole = rng.randrange(4096, 2**33)
        micro = rng.randrange(10**6)
        exact = float(f"{whole}.{micro:06d}")
        values += [exact, whole + micro / 1e6, math.nextafter(exact, 0.0)]
        values += [math.nextafter(exact, math.inf), rng.uniform(4000.0, 2.0**33 + 10)]
        values += [whole + rng.randrange(10) / 10, float(whole), whole + 0.9999995]
    for p in range(11, 35):
        edge = 2.0**p
        values += [edge + k * 2.0 ** (p - 52) for k in range(-40, 40)]
    wrong = [(v, number_bytes(v)) for v in values if number_bytes(v) != orjson.dumps(v)]
    assert wrong == []


@given(st.floats(allow_nan=True, allow_infinity=True) | st.floats(4000.0, 2.0**33 + 1))
def test_any_float_is_written_as_orjson_writes_it(f: float) -> None:
    assert number_bytes(f) == orjson.dumps(f)


def test_every_lane_of_the_digit_word_is_written_whole() -> None:
    # The eight digits are made in lanes of one word (four digits, then two,
    # then one): every value of each half of four digits, alone and beside
    # the other half at its extremes, each on its own and as the eight
    # zero-padded digits after a number's first ones.
    values: list[int] = []
    for half in range(10000):
        values += [half, half * 10000, half * 10000 + 9999, 99990000 + half]
        values += [10**8 + half * 10000 + half, 10**16 + half * 10001]
    wrong = [(n, number_bytes(n)) for n in values if number_bytes(n) != str(n).encode()]
    assert wrong == []


def test_integers_are_written_as_orjson_writes_them() -> None:
    # Eight digits to a word: around every power of ten, and at random.
    edges = [10**k + d for k in range(19) for d in (-1, 0, 1)] + [2**62 - 1]
    rng = random.Random(2)
    values = edges + [rng.randrange(10 ** rng.randrange(1, 19)) for _ in range(20000)]
    wrong = [(n, number_bytes(n)) for n in values if number_bytes(n) != orjson.dumps(n)]
    assert wrong == []
