"""Coverage-guided fuzzing of fintrace with atheris (libFuzzer for Python).

Two targets, chosen with ``FINTRACE_FUZZ_TARGET``:

* ``file`` (default): the input is a whole capture file. It goes through the
  core exactly as ``fintrace analyze`` drives it (reader, decoder, flow
  table, tracker, classifier, aggregates, JSON rendering). Seed it with the
  captures of ``captures/`` and ``../shared/corpus/``.
* ``packet``: the first byte picks a link type, the rest is one packet; it
  goes through the decoder's general path and the fragment reassembler, and
  through the decode loop's fast path and general path, which must give the
  same segments and skip reasons. Faster, so it reaches deep decoder states
  sooner.

The rules checked are the ones ``tests/test_fuzz.py`` checks: nothing but
:class:`~fintrace.errors.FintraceError` may escape the core, and what the
run reports must add up. libFuzzer itself catches hangs (``-timeout``) and
memory blow-ups (``-rss_limit_mb``). See ``docs/fuzzing.md``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

with atheris.instrument_imports(include=["fintrace"]):
    from fintrace.decode import DecodeStats, decode_packet, segments
    from fintrace.errors import FintraceError
    from fintrace.pipeline import AnalyzeOptions, analyze
    from fintrace.reassembly import Reassembler
    from fintrace.render.jsonout import connection_json

#: Link types the ``packet`` target picks from (index = first byte mod len).
LINKTYPES = (1, 113, 276, 101, 228, 229, 0, 108, 9, 50, 104, 242, 12, 14, 147)

#: ``FINTRACE_FUZZ_COMPARE_PATHS=0`` stops comparing the decoder's two paths,
#: to hunt for crashes past a known disagreement.
COMPARE_PATHS = os.environ.get("FINTRACE_FUZZ_COMPARE_PATHS", "1") != "0"

_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
_PATH = os.path.join(_DIR, f"fintrace-fuzz-{os.getpid()}.cap")


def check_file(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        run = analyze(AnalyzeOptions(paths=(_PATH,)))
    except FintraceError:
        return
    for conn in run.connections():
        connection_json(conn)
    run.summary()
    for cap in run.captures:
        skipped = cap.skipped
        if any(v <= 0 for v in skipped.values()) or sum(skipped.values()) > cap.packets:
            raise AssertionError(f"skip counts do not add up: {skipped} of {cap.packets}")
        if cap.tcp_packets < 0:
            raise AssertionError(f"negative tcp_packets {cap.tcp_packets}")
        if cap.truncated and not cap.warnings:
            raise AssertionError("truncated without a warning")


def check_packet(data: bytes) -> None:
    if not data:
        return
    lt = LINKTYPES[data[0] % len(LINKTYPES)]
    pkt = data[1:]
    # Twice through the general path (the second copy may complete a
    # datagram the first began), then the decode loop's fast and general
    # paths, which must agree segment for segment.
    frags = Reassembler(Counter())
    decode_packet(lt, pkt, len(pkt), frags, 1)
    decode_packet(lt, pkt, len(pkt), frags, 2)
    frags.finish()
    if not COMPARE_PATHS:
        return
    found = []
    for general_only in (False, True):
        skipped: Counter[str] = Counter()
        frags = Reassembler(skipped)
        records = iter([(0.0, pkt, 0, len(pkt), len(pkt), lt)])
        segs = list(segments(records, DecodeStats(skipped), frags, general_only=general_only))
        frags.finish()
        found.append((segs, dict(skipped)))
    if found[0] != found[1]:
        raise AssertionError(f"fast path {found[0]} != general path {found[1]}")


def main() -> None:
    target = os.environ.get("FINTRACE_FUZZ_TARGET", "file")
    test = check_packet if target == "packet" else check_file
    atheris.Setup(sys.argv, test)
    try:
        atheris.Fuzz()
    finally:
        if os.path.exists(_PATH):
            os.unlink(_PATH)


if __name__ == "__main__":
    main()
