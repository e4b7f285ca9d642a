"""IPv4 and IPv6 fragment reassembly, as Wireshark does it by default.

A fragmented datagram is decoded in the frame that completes it; the other
fragments are counted as ``ip_fragment`` (their bytes are used, nothing is
lost). Fragments of datagrams that never complete are moved to
``unreassembled_fragment`` when they are evicted or when the capture ends.
Memory is bounded: at most :data:`MAX_HELD` bytes held for one datagram
(overlapping fragments included), :data:`MAX_PENDING` datagrams and
:data:`MAX_PENDING_BYTES` bytes waiting at once (the oldest is evicted first).
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from fintrace.model import SkipReason

MAX_DATAGRAM = 65_535
MAX_PENDING = 4_096
#: Fragments kept per datagram; more than this is an attack, not traffic.
MAX_FRAGMENTS = 256
#: Bytes held for one datagram: overlaps can make fragments add up to more
#: than the datagram, but not to much more in real traffic.
MAX_HELD = 2 * MAX_DATAGRAM
#: Bytes held for all waiting datagrams together.
MAX_PENDING_BYTES = 32 * 1024 * 1024


class _Pending:
    __slots__ = ("frames", "parts", "size", "total")

    def __init__(self) -> None:
        self.parts: dict[int, bytes] = {}
        self.total = -1
        self.size = 0
        self.frames = 0


class Reassembler:
    """Collects fragments by (version, src, dst, id[, proto]) key."""

    def __init__(self, skipped: Counter[str]) -> None:
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()
        self._skipped = skipped
        self._held = 0  # bytes of all pending parts

    def add(self, key: bytes, offset: int, data: bytes, more: bool) -> bytes | SkipReason | None:
        """Add one fragment; the whole payload once it is complete, else None."""
        pend = self._pending.get(key)
        if pend is None:
            if len(self._pending) >= MAX_PENDING:
                _, old = self._pending.popitem(last=False)
                self._give_up(old)
            pend = self._pending[key] = _Pending()
        pend.frames += 1
        prev = pend.parts.get(offset)
        grow = len(data) - len(prev) if prev is not None else len(data)
        if (
            offset + len(data) > MAX_DATAGRAM
            or pend.frames > MAX_FRAGMENTS
            or (grow > 0 and pend.size + grow > MAX_HELD)
        ):
            del self._pending[key]
            # This frame is counted by the caller; the earlier ones move here.
            self._give_up(pend, this_frame_counted_by_caller=True)
            return SkipReason.BAD_FRAGMENT
        if grow > 0:
            pend.parts[offset] = data
            pend.size += grow
            self._held += grow
            while self._held > MAX_PENDING_BYTES and len(self._pending) > 1:
                oldest, evicted = next(iter(self._pending.items()))
                if evicted is pend:
                    break
                del self._pending[oldest]
                self._give_up(evicted)
        if not more:
            pend.total = offset + len(data)
        if pend.total < 0:
            return None
        # Complete when the parts cover [0, total) without a hole.
        covered = 0
        for start in sorted(pend.parts):
            if start > covered:
                return None
            covered = max(covered, start + len(pend.parts[start]))
        if covered < pend.total:
            return None
        del self._pending[key]
        self._held -= pend.size
        out = bytearray(pend.total)
        # Earlier data wins where fragments overlap: write in reverse order.
        for start in sorted(pend.parts, reverse=True):
            part = pend.parts[start][: max(0, pend.total - start)]
            out[start : start + len(part)] = part
        # The fragments before this one were counted as held; they are used.
        return bytes(out)

    def _give_up(self, pend: _Pending, this_frame_counted_by_caller: bool = False) -> None:
        self._held -= pend.size
        held = pend.frames - (1 if this_frame_counted_by_caller else 0)
        if held > 0:
            self._skipped[SkipReason.IP_FRAGMENT] -= held
            self._skipped[SkipReason.UNREASSEMBLED_FRAGMENT] += held
            if self._skipped[SkipReason.IP_FRAGMENT] <= 0:
                del self._skipped[SkipReason.IP_FRAGMENT]

    def finish(self) -> None:
        """The capture ended: whatever is still pending never completed."""
        while self._pending:
            _, pend = self._pending.popitem(last=False)
            self._give_up(pend)
