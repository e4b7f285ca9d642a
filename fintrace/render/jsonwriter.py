"""A connection's JSON, written field by field into a byte buffer.

``orjson.dumps(connection_dict(c))`` builds eleven dictionaries and a list
per connection and then walks them again; on a capture of 100,000
connections that took about a third of all the instructions of a ``--format
jsonl`` run (callgrind, docs/performance.md). Compiled, :func:`write_connection`
writes the same bytes straight from the record: the keys as constants, the
integers digit by digit, the strings that repeat (addresses, capture names,
enumeration values) from a cache of their JSON, and what is left (floats,
other strings, integers out of the machine's range) by orjson itself, one
value at a time. ``tests/test_jsonwriter.py`` holds it to orjson's bytes on
every capture and on records of every kind of value.
"""

from __future__ import annotations

from typing import Final

import orjson
from librt.strings import BytesWriter
from mypy_extensions import i64, u8

from fintrace.model import Connection, Endpoint

_dumps: Final = orjson.dumps

#: The JSON of strings met again and again: addresses, capture names, enum
#: values. Cleared when full, as pipeline.ip_text's cache is.
_STRINGS: Final[dict[str, bytes]] = {}
_STRINGS_MAX: Final = 1 << 16
#: The largest integer written digit by digit: compiled, comparing with it
#: is one machine comparison (a larger one is a Python object).
_SMALL_MAX: Final = (1 << 62) - 1


def write_connection(w: BytesWriter, c: Connection) -> None:
    """Append ``orjson.dumps(connection_dict(c))``, byte for byte, to ``w``."""
    w.write(b'{"stream":')
    _int(w, c.stream)
    w.write(b',"capture":')
    _str(w, c.capture)
    w.write(b',"client":')
    _endpoint(w, c.client)
    w.write(b',"server":')
    _endpoint(w, c.server)
    w.write(b',"roles_inferred":')
    _bool(w, c.roles_inferred)
    w.write(b',"first_frame":')
    _int(w, c.first_frame)
    w.write(b',"last_frame":')
    _int(w, c.last_frame)
    # Most state changes happen at the first or the last packet's time, or at
    # the previous change's: their text is made once (not for 0.0, which
    # equals -0.0 but is written apart).
    first_ts = c.first_ts
    first_text = _dumps(first_ts)
    last_ts = c.last_ts
    last_text = first_text if last_ts == first_ts and last_ts != 0.0 else _dumps(last_ts)
    w.write(b',"first_ts":')
    w.write(first_text)
    w.write(b',"last_ts":')
    w.write(last_text)
    w.write(b',"packets":')
    _int(w, c.packets)
    payload = c.payload_bytes
    w.write(b',"payload_bytes":{"client":')
    _int(w, payload.client)
    w.write(b',"server":')
    _int(w, payload.server)
    w.write(b'},"close_type":')
    _str(w, c.close_type)
    w.write(b',"active_closer":')
    _opt_str(w, c.active_closer)
    w.write(b',"reset_by":')
    _opt_str(w, c.reset_by)
    w.write(b',"reset_phase":')
    _opt_str(w, c.reset_phase)
    w.write(b',"time_wait":')
    _opt_str(w, c.time_wait)
    fins = c.fin_frames
    w.write(b',"fin_frames":{"client":')
    _opt_int(w, fins.client)
    w.write(b',"server":')
    _opt_int(w, fins.server)
    w.write(b'},"rst_frame":')
    _opt_int(w, c.rst_frame)
    w.write(b',"half_close_bytes":')
    _int(w, c.half_close_bytes)
    w.write(b',"close_wait_s":')
    close_wait = c.close_wait_s
    w.write(b"null" if close_wait is None else _dumps(close_wait))
    w.write(b',"stuck":')
    _bool(w, c.stuck)
    w.write(b',"final_ack_seen":')
    final_ack = c.final_ack_seen
    if final_ack is None:
        w.write(b"null")
    else:
        _bool(w, final_ack)
    w.write(b',"fin_retransmits":')
    _int(w, c.fin_retransmits)
    states = c.end_state
    w.write(b',"end_state":{"client":')
    _opt_str(w, states.client)
    w.write(b',"server":')
    _opt_str(w, states.server)
    w.write(b'},"transitions":[')
    first = True
    seen_ts = first_ts
    seen_text = first_text
    for t in c.transitions:
        ts = t.ts
        if ts != seen_ts or ts == 0.0:
            seen_ts = ts
            if ts == last_ts and ts != 0.0:
                seen_text = last_text
            elif ts == first_ts and ts != 0.0:
                seen_text = first_text
            else:
                seen_text = _dumps(ts)
        w.write(b'{"side":' if first else b',{"side":')
        first = False
        _str(w, t.side)
        w.write(b',"state":')
        _str(w, t.state)
        w.write(b',"frame":')
        _int(w, t.frame)
        w.write(b',"ts":')
        w.write(seen_text)
        w.write(b"}")
    w.write(b'],"reused_tuple":')
    reuse = c.reused_tuple
    if reuse is None:
        w.write(b"null")
    else:
        w.write(b'{"previous_stream":')
        _int(w, reuse.previous_stream)
        w.write(b',"gap_s":')
        w.write(_dumps(reuse.gap_s))
        w.write(b"}")
    w.write(b',"anomalies":[')
    first = True
    for a in c.anomalies:
        if not first:
            w.write(b",")
        first = False
        _str(w, a)
    w.write(b'],"community_id":')
    w.write(_dumps(c.community_id))  # one per connection: not worth a cache entry
    w.write(b',"zeek_conn_state":')
    _str(w, c.zeek_conn_state)
    w.write(b',"last_capture":')
    _str(w, c.last_capture)
    w.write(b',"files":[')
    first = True
    for f in c.files:
        w.write(b'{"capture":' if first else b',{"capture":')
        first = False
        _str(w, f.capture)
        w.write(b',"stream":')
        _int(w, f.stream)
        w.write(b',"first_frame":')
        _int(w, f.first_frame)
        w.write(b',"last_frame":')
        _int(w, f.last_frame)
        w.write(b',"packets":')
        _int(w, f.packets)
        w.write(b"}")
    w.write(b'],"rst_lost_bytes":')
    _int(w, c.rst_lost_bytes)
    w.write(b"}")


def connection_bytes(c: Connection) -> bytes:
    """``orjson.dumps(connection_dict(c))``, written by :func:`write_connection`."""
    w = BytesWriter()
    write_connection(w, c)
    return w.getvalue()


def _endpoint(w: BytesWriter, e: Endpoint) -> None:
    w.write(b'{"ip":')
    _str(w, e.ip)
    w.write(b',"port":')
    _int(w, e.port)
    w.write(b"}")


def _int(w: BytesWriter, n: int) -> None:
    if n < 0 or n > _SMALL_MAX:
        w.write(_dumps(n))  # orjson says what it cannot write, as before
        return
    v: i64 = n
    if v < 10:
        w.append(u8(48 + v))
        return
    # The digits backwards, then turned around in place: no object made.
    start: i64 = len(w)
    while v:
        w.append(u8(48 + v % 10))
        v //= 10
    i = start
    j: i64 = len(w) - 1
    while i < j:
        d = w[i]
        w[i] = w[j]
        w[j] = d
        i += 1
        j -= 1


def _opt_int(w: BytesWriter, n: int | None) -> None:
    if n is None:
        w.write(b"null")
    else:
        _int(w, n)


def _bool(w: BytesWriter, b: bool) -> None:
    w.write(b"true" if b else b"false")


def _str(w: BytesWriter, s: str) -> None:
    text = _STRINGS.get(s)
    if text is None:
        # A copy: orjson's bytes keep the 4 KiB it wrote them in (20 MB for
        # the 5,000 addresses of a capture, in tracemalloc).
        text = memoryview(_dumps(s)).tobytes()
        if len(_STRINGS) >= _STRINGS_MAX:
            _STRINGS.clear()
        _STRINGS[s] = text
    w.write(text)


def _opt_str(w: BytesWriter, s: str | None) -> None:
    if s is None:
        w.write(b"null")
    else:
        _str(w, s)
