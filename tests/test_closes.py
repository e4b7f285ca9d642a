"""Every crafted capture in ``captures/closes`` against its hand-written golden.

Each ``<name>.golden.json`` lists the connections fintrace must report for
``<name>.pcap``, written from ``../shared/TEARDOWN.md`` and the segments
``captures/make_closes.py`` crafts (see the ``about`` line of each file), never
from fintrace's output. A golden checks every field it names, and each names
all the contract's connection fields except those that are not this test's
business: ``capture`` and ``last_capture`` (a path), ``community_id`` and
``zeek_conn_state`` (tested with the interop module) and ``files``.
Timestamps and durations are compared to the microsecond (the captures'
resolution); ``anomalies`` as a set; everything else exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CAPTURES

CLOSES = CAPTURES / "closes"
GOLDENS = sorted(CLOSES.glob("*.golden.json"))
#: The fields every golden connection must give (all but the ones named above).
CHECKED = frozenset(
    {
        "stream",
        "client",
        "server",
        "roles_inferred",
        "first_frame",
        "last_frame",
        "first_ts",
        "last_ts",
        "packets",
        "payload_bytes",
        "close_type",
        "active_closer",
        "reset_by",
        "reset_phase",
        "time_wait",
        "fin_frames",
        "rst_frame",
        "half_close_bytes",
        "close_wait_s",
        "stuck",
        "final_ack_seen",
        "fin_retransmits",
        "end_state",
        "transitions",
        "reused_tuple",
        "anomalies",
        "rst_lost_bytes",
    }
)
TOLERANCE = 1e-6

Analyze = Callable[..., list[dict[str, Any]]]


def _same(expected: Any, actual: Any, where: str) -> list[str]:
    """Differences between a golden value and fintrace's, as readable lines."""
    if isinstance(expected, float) and not isinstance(actual, bool):
        if isinstance(actual, int | float) and math.isclose(
            expected, actual, rel_tol=0, abs_tol=TOLERANCE
        ):
            return []
        return [f"{where}: expected {expected!r}, got {actual!r}"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for k in sorted(set(expected) | set(actual)):
            if k not in actual or k not in expected:
                out.append(f"{where}.{k}: expected {expected.get(k)!r}, got {actual.get(k)!r}")
            else:
                out.extend(_same(expected[k], actual[k], f"{where}.{k}"))
        return out
    if isinstance(expected, list) and isinstance(actual, list | tuple):
        if len(expected) != len(actual):
            return [f"{where}: expected {len(expected)} items {expected!r}, got {list(actual)!r}"]
        out = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            out.extend(_same(e, a, f"{where}[{i}]"))
        return out
    if expected != actual or type(expected) is not type(actual):
        # StrEnum values compare equal to their strings; anything else must match exactly.
        if isinstance(expected, str) and isinstance(actual, str) and expected == actual:
            return []
        return [f"{where}: expected {expected!r}, got {actual!r}"]
    return []


def diff(golden: dict[str, Any], conns: list[dict[str, Any]]) -> list[str]:
    want = golden["connections"]
    if len(want) != len(conns):
        return [f"expected {len(want)} connections, got {len(conns)}"]
    out: list[str] = []
    for w, got in zip(want, conns, strict=True):
        here = f"stream {w['stream']}"
        expected = dict(w)
        actual = {k: got[k] for k in expected}
        expected["anomalies"] = sorted(expected["anomalies"])
        actual["anomalies"] = sorted(actual["anomalies"])
        out.extend(_same(expected, actual, here))
    return out


def test_every_capture_has_a_golden_and_the_other_way_round() -> None:
    pcaps = {p.name.removesuffix(".pcap") for p in CLOSES.glob("*.pcap")}
    goldens = {p.name.removesuffix(".golden.json") for p in GOLDENS}
    assert pcaps, "captures/closes is empty: run python captures/make_closes.py"
    assert pcaps == goldens


def test_the_captures_are_what_make_closes_writes(tmp_path: Path) -> None:
    """The committed captures are reproducible from the script, byte for byte."""
    from make_closes import build_all

    from craft import write_pcap

    built = build_all()
    assert set(built) == {p.name.removesuffix(".pcap") for p in CLOSES.glob("*.pcap")}
    for name, packets in built.items():
        out = tmp_path / f"{name}.pcap"
        write_pcap(str(out), packets)
        assert out.read_bytes() == (CLOSES / f"{name}.pcap").read_bytes(), name


@pytest.mark.parametrize("golden_path", GOLDENS, ids=lambda p: p.name.removesuffix(".golden.json"))
def test_capture_matches_its_golden(golden_path: Path, analyze: Analyze) -> None:
    golden = json.loads(golden_path.read_text())
    for conn in golden["connections"]:
        assert set(conn) == CHECKED, f"{golden_path.name}: fields {set(conn) ^ CHECKED}"
    capture = CLOSES / golden["capture"]
    problems = diff(golden, analyze(capture))
    assert not problems, "\n".join(problems)


def test_the_comparison_can_fail(analyze: Analyze) -> None:
    """A golden with one wrong value, one wrong ts, one missing anomaly is rejected."""
    golden = json.loads((CLOSES / "graceful_client_first.golden.json").read_text())
    conns = analyze(CLOSES / golden["capture"])
    assert diff(golden, conns) == []
    wrong = json.loads(json.dumps(golden))
    wrong["connections"][0]["close_type"] = "piggybacked"
    wrong["connections"][0]["transitions"][4]["ts"] += 0.001
    wrong["connections"][0]["anomalies"] = ["no_handshake"]
    wrong["connections"][0]["close_wait_s"] = None
    problems = diff(wrong, conns)
    assert len(problems) == 4, problems
