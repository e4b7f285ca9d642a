"""A connection's JSON, written field by field into a byte buffer.

``orjson.dumps(connection_dict(c))`` builds eleven dictionaries and a list
per connection and then walks them again; on a capture of 100,000
connections that took about a third of all the instructions of a ``--format
jsonl`` run (callgrind, docs/performance.md). Compiled, :func:`write_connection`
writes the same bytes straight from the record: the keys as constants, the
integers eight digits at a time, timestamps the same way once their six
decimals are proven to be orjson's (:func:`_float`), the strings
that repeat (addresses, capture names, enumeration values) from a cache of
their JSON, and what is left (other floats, other strings, integers out of
the machine's range) by orjson itself, one value at a time.
``tests/test_jsonwriter.py`` holds it to orjson's bytes on every capture and
on records of every kind of value.
"""

from __future__ import annotations

from typing import Final

import orjson
from librt.strings import BytesWriter, write_i64_le
from mypy_extensions import i64, u8

from fintrace.model import Connection, Endpoint

_dumps: Final = orjson.dumps

#: The JSON of strings met again and again: addresses, capture names, enum
#: values. Cleared when full, as pipeline.ip_text's cache is.
_STRINGS: Final[dict[str, bytes]] = {}
_STRINGS_MAX: Final = 1 << 16
#: A field's key and value as one piece, by value (:func:`_field`); each table
#: belongs to one key, so the file-span table has one for the first span's key
#: (after ``[``) and one for the others' (after ``,``): the key is part of the piece.
_CAPTURES: Final[dict[str | None, bytes]] = {}
_CAPTURES_LAST: Final[dict[str | None, bytes]] = {}
_FIRST_FILE_CAPTURES: Final[dict[str | None, bytes]] = {}
_FILE_CAPTURES: Final[dict[str | None, bytes]] = {}
_CLOSE_TYPES: Final[dict[str | None, bytes]] = {}
_ACTIVE_CLOSERS: Final[dict[str | None, bytes]] = {}
_RESET_BY: Final[dict[str | None, bytes]] = {}
_RESET_PHASES: Final[dict[str | None, bytes]] = {}
_TIME_WAITS: Final[dict[str | None, bytes]] = {}
_END_CLIENT: Final[dict[str | None, bytes]] = {}
_END_SERVER: Final[dict[str | None, bytes]] = {}
_ZEEK_STATES: Final[dict[str | None, bytes]] = {}
#: ``stuck``'s value, ``final_ack_seen``'s and the key after them, by
#: 3 × stuck + (0 for null, 1 for true, 2 for false).
_STUCK_FINAL_ACK: Final = tuple(
    stuck + b',"final_ack_seen":' + final + b',"fin_retransmits":'
    for stuck in (b"false", b"true")
    for final in (b"null", b"true", b"false")
)
#: A transition's JSON from its side to its frame number's key, by state: one
#: table for each side (see :func:`_side_state`).
_CLIENT_STATES: Final[dict[str, bytes]] = {}
_SERVER_STATES: Final[dict[str, bytes]] = {}
#: The largest integer the writer writes itself: compiled, comparing with it
#: is one machine comparison (a larger one is a Python object).
_SMALL_MAX: Final = (1 << 62) - 1


class _Seconds:
    """The two whole seconds :func:`_float` wrote last, and their text with the point."""

    def __init__(self) -> None:
        self.whole: i64 = -1
        self.text = b""
        self.other_whole: i64 = -1
        self.other_text = b""

    def swap(self) -> None:
        """Make the other seconds the last written."""
        whole = self.whole
        text = self.text
        self.whole = self.other_whole
        self.text = self.other_text
        self.other_whole = whole
        self.other_text = text


_SECONDS: Final = _Seconds()


def write_connection(w: BytesWriter, c: Connection) -> None:
    """Append ``orjson.dumps(connection_dict(c))``, byte for byte, to ``w``.

    A value that is a constant itself (``true``, ``null``, an enumeration's
    string, a capture name) goes out with the keys around it as one piece, and
    a closing brace or bracket with the key after it: a write costs about a
    hundred instructions, whatever its length.
    """
    w.write(b'{"stream":')
    _int(w, c.stream)
    _field(w, _CAPTURES, b',"capture":', c.capture)
    _endpoint(w, b',"client":{"ip":', c.client)
    _endpoint(w, b'},"server":{"ip":', c.server)
    if c.roles_inferred:
        w.write(b'},"roles_inferred":true,"first_frame":')
    else:
        w.write(b'},"roles_inferred":false,"first_frame":')
    _int(w, c.first_frame)
    w.write(b',"last_frame":')
    _int(w, c.last_frame)
    w.write(b',"first_ts":')
    _float(w, c.first_ts)
    w.write(b',"last_ts":')
    _float(w, c.last_ts)
    w.write(b',"packets":')
    _int(w, c.packets)
    payload = c.payload_bytes
    w.write(b',"payload_bytes":{"client":')
    _int(w, payload.client)
    w.write(b',"server":')
    _int(w, payload.server)
    _field(w, _CLOSE_TYPES, b'},"close_type":', c.close_type)
    _field(w, _ACTIVE_CLOSERS, b',"active_closer":', c.active_closer)
    _field(w, _RESET_BY, b',"reset_by":', c.reset_by)
    _field(w, _RESET_PHASES, b',"reset_phase":', c.reset_phase)
    _field(w, _TIME_WAITS, b',"time_wait":', c.time_wait)
    fins = c.fin_frames
    w.write(b',"fin_frames":{"client":')
    _opt_int(w, fins.client, b'null,"server":', b',"server":')
    _opt_int(w, fins.server, b'null},"rst_frame":', b'},"rst_frame":')
    _opt_int(w, c.rst_frame, b'null,"half_close_bytes":', b',"half_close_bytes":')
    _int(w, c.half_close_bytes)
    close_wait = c.close_wait_s
    if close_wait is None:
        w.write(b',"close_wait_s":null,"stuck":')
    else:
        w.write(b',"close_wait_s":')
        _float(w, close_wait)
        w.write(b',"stuck":')
    final_ack = c.final_ack_seen
    w.write(
        _STUCK_FINAL_ACK[
            (3 if c.stuck else 0) + (0 if final_ack is None else 1 if final_ack else 2)
        ]
    )
    _int(w, c.fin_retransmits)
    states = c.end_state
    _field(w, _END_CLIENT, b',"end_state":{"client":', states.client)
    _field(w, _END_SERVER, b',"server":', states.server)
    w.write(b'},"transitions":[')
    sep = b'{"side":'
    for t in c.transitions:
        w.write(sep)
        sep = b'},{"side":'
        _side_state(w, t.side, t.state)
        _int(w, t.frame)
        w.write(b',"ts":')
        _float(w, t.ts)
    # The last transition's brace, and what follows the list.
    reuse = c.reused_tuple
    if reuse is None:
        w.write(
            b'}],"reused_tuple":null,"anomalies":['
            if c.transitions
            else b'],"reused_tuple":null,"anomalies":['
        )
    else:
        w.write(
            b'}],"reused_tuple":{"previous_stream":'
            if c.transitions
            else b'],"reused_tuple":{"previous_stream":'
        )
        _int(w, reuse.previous_stream)
        w.write(b',"gap_s":')
        _float(w, reuse.gap_s)
        w.write(b'},"anomalies":[')
    first = True
    for a in c.anomalies:
        if not first:
            w.write(b",")
        first = False
        _str(w, a)
    w.write(b'],"community_id":')
    w.write(_dumps(c.community_id))  # one per connection: not worth a cache entry
    _field(w, _ZEEK_STATES, b',"zeek_conn_state":', c.zeek_conn_state)
    _field(w, _CAPTURES_LAST, b',"last_capture":', c.last_capture)
    w.write(b',"files":[')
    first = True
    for f in c.files:
        if first:
            _field(w, _FIRST_FILE_CAPTURES, b'{"capture":', f.capture)
            first = False
        else:
            _field(w, _FILE_CAPTURES, b',{"capture":', f.capture)
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


def number_bytes(n: int | float) -> bytes:
    """``orjson.dumps(n)``, written as :func:`write_connection` writes numbers."""
    w = BytesWriter()
    if isinstance(n, float):
        _float(w, n)
    else:
        _int(w, n)
    return w.getvalue()


def _int(w: BytesWriter, n: int) -> None:
    if n < 0 or n > _SMALL_MAX:
        w.write(_dumps(n))  # orjson says what it cannot write, as before
        return
    v: i64 = n
    if v < 10:
        w.append(u8(48 + v))
    elif v < 100000000:
        _digits(w, v, 0)
    else:
        _int(w, v // 100000000)
        _digits(w, v % 100000000, 8)


def _digits(w: BytesWriter, v: i64, width: i64) -> None:
    """Append ``v`` (below 10**8) in decimal, zero-padded to ``width`` digits.

    All eight digits are made at once in one 64-bit word, a digit a byte, the
    first in the lowest byte (so written little-endian): the word holds the
    two halves of four digits in its two 32-bit lanes, then the four pairs
    of digits in 16-bit lanes, then the digits, each lane divided by 100 or
    10 by a multiplication and a shift that are exact for a lane's range
    (``x * 10486 >> 20`` is ``x // 100`` below 43,699; ``x * 103 >> 10`` is
    ``x // 10`` below 179), with no lane reaching into the next. The leading
    zeros are shifted out and the bytes past the last digit cut off again.
    (A division by ten a digit cost about 200 instructions a number; a table
    of digit strings fewer, but more time: its 30,000 objects, read at
    random, missed the processor's caches.)
    """
    digits: i64 = 1
    scale: i64 = 10
    while v >= scale:
        digits += 1
        scale *= 10
    count = max(width, digits)
    high = v // 10000
    x: i64 = high | (v - high * 10000) << 32
    q = (x * 10486 >> 20) & 0x0000007F0000007F
    x = q | (x - q * 100) << 16
    q = (x * 103 >> 10) & 0x000F000F000F000F
    x = (q | (x - q * 10) << 8) + 0x3030303030303030
    write_i64_le(w, x >> (8 - count) * 8)
    if count < 8:
        w.truncate(len(w) - 8 + count)


def _float(w: BytesWriter, f: float) -> None:
    """Append ``orjson.dumps(f)``: a timestamp's digits written here, else orjson's.

    orjson writes the shortest decimal that reads back as ``f``. Between
    2**12 and 2**33 (Unix times among them) a double's unit in the last place
    is at most 2**-20, finer than a microsecond, so if the number written to
    six decimals (trailing zeros dropped) reads back as ``f`` it is that
    shortest decimal: one with fewer decimals lies at least its last digit's
    unit away, farther than ``f``'s neighbours. Whether it reads back is
    decided exactly, in integers: the decimal ``whole + u / 10**6`` and
    ``f = whole + big / 2**e`` must lie less than half a unit, ``2**-e / 2``,
    apart. Anything else (other ranges, more decimals, a tie) goes to orjson.
    """
    if 4096.0 <= f < 8589934592.0:
        n = int(f)
        whole: i64 = n
        frac = f - float(whole)  # exact: a double's fraction is a double
        e: i64 = 53 - n.bit_length()  # f's last place is 2**-e
        scale: i64 = 1
        scale <<= e  # not 1 << e: compiled, that shifts a C int, 32 bits wide
        big: i64 = int(frac * float(scale))  # exact: a power of two
        u: i64 = int(frac * 1e6 + 0.5)
        gap: i64 = u * scale - big * 1000000
        if -500000 < gap < 500000 and u < 1000000:
            # The seconds' text, the point with it, from the two kept last:
            # a connection's changes happen mostly in its first packet's second
            # or its last one's.
            seconds = _SECONDS
            if whole == seconds.whole:
                w.write(seconds.text)
            elif whole == seconds.other_whole:
                w.write(seconds.other_text)
                seconds.swap()
            else:
                seconds.other_whole = whole
                seconds.other_text = b"%d." % n
                w.write(seconds.other_text)
                seconds.swap()
            # The decimals without their trailing zeros ("0" for none).
            places: i64 = 6
            while places > 1 and u % 10 == 0:
                u //= 10
                places -= 1
            _digits(w, u, places)
            return
    w.write(_dumps(f))


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


def _side_state(w: BytesWriter, side: str, state: str) -> None:
    """Append a transition's side and state up to its frame number's key: one
    lookup and one write (a table for each side), not two and five."""
    if side == "client":
        table = _CLIENT_STATES
    elif side == "server":
        table = _SERVER_STATES
    else:
        _str(w, side)
        w.write(b',"state":')
        _str(w, state)
        w.write(b',"frame":')
        return
    text = table.get(state)
    if text is None:
        text = _dumps(side) + b',"state":' + _dumps(state) + b',"frame":'
        if len(table) >= _STRINGS_MAX:
            table.clear()
        table[state] = text
    w.write(text)


def _endpoint(w: BytesWriter, opening: bytes, e: Endpoint) -> None:
    """Append ``opening`` (up to the address's key) and the endpoint's address and
    port; its closing brace goes out with the key after it."""
    w.write(opening)
    _str(w, e.ip)
    w.write(b',"port":')
    _int(w, e.port)


def _opt_int(w: BytesWriter, n: int | None, null_after: bytes, after: bytes) -> None:
    """Append ``n`` and ``after``; for None, ``null_after``: ``null`` and ``after``
    as one piece."""
    if n is None:
        w.write(null_after)
    else:
        _int(w, n)
        w.write(after)


def _field(w: BytesWriter, pieces: dict[str | None, bytes], key: bytes, s: str | None) -> None:
    """Append ``key`` and the JSON of ``s`` (``null`` for None) as one piece, made
    once per value in ``pieces`` (one table for each field and ``key``)."""
    text = pieces.get(s)
    if text is None:
        text = key + (b"null" if s is None else _dumps(s))
        if len(pieces) >= _STRINGS_MAX:
            pieces.clear()
        pieces[s] = text
    w.write(text)
