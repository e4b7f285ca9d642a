"""Turn a run's summary into findings: what an engineer should look at first.

Each :class:`Finding` carries the numbers behind it and a Wireshark display
filter that opens its evidence. Findings come most severe first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fintrace.pipeline import CaptureInfo


class Severity(IntEnum):
    INFO = 1
    WARNING = 2
    CRITICAL = 3


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    title: str
    details: tuple[str, ...]
    #: capture file -> Wireshark display filter for the evidence
    filters: tuple[tuple[str, str], ...]


def stream_filter(streams: Sequence[int]) -> str:
    """A Wireshark display filter selecting these ``tcp.stream`` numbers."""
    if len(streams) == 1:
        return f"tcp.stream eq {streams[0]}"
    return "tcp.stream in {" + " ".join(str(s) for s in streams) + "}"


def _filters(evidence: dict[str, list[int]]) -> tuple[tuple[str, str], ...]:
    return tuple((cap, stream_filter(streams)) for cap, streams in evidence.items() if streams)


def findings(summary: dict[str, Any], captures: Sequence[CaptureInfo]) -> list[Finding]:
    out: list[Finding] = []
    cw = summary["close_wait"]
    for svc in cw["stuck_by_service"]:
        out.append(
            Finding(
                Severity.CRITICAL,
                f"{svc['service']} leaves connections in CLOSE_WAIT",
                (
                    f"{svc['count']} connection(s) received a FIN and never closed their side "
                    f"(idle ≥ {cw['stuck_after_s']:g} s at the end of the capture); "
                    f"oldest {svc['oldest_s']:.1f} s.",
                ),
                _filters(svc["streams"]),
            )
        )
    lost = summary["resets"]["lost_data"]
    if lost["count"]:
        out.append(
            Finding(
                Severity.CRITICAL,
                f"{lost['count']} reset(s) threw away unacknowledged data",
                (
                    f"{lost['bytes']} bytes sent by the peer were never acknowledged "
                    "before the RST.",
                ),
                _filters(lost["streams"]),
            )
        )
    tw = summary["time_wait"]
    for t in tw["by_tuple"][:5]:
        share = t["share_of_ephemeral"]
        if share >= 0.05:
            out.append(
                Finding(
                    Severity.CRITICAL if share >= 0.5 else Severity.WARNING,
                    f"TIME_WAIT toward {t['server_ip']}:{t['server_port']} from {t['client_ip']}: "
                    f"peak {t['peak']} ({share * 100:.1f}% of {tw['ephemeral_ports']} ports)",
                    (f"4-tuples held in TIME_WAIT at once (2×MSL = {2 * tw['msl_s']:g} s each).",),
                    (),
                )
            )
    reused = tw["reused_within_2msl"]
    if reused["count"]:
        out.append(
            Finding(
                Severity.WARNING,
                f"{reused['count']} new connection(s) reused a 4-tuple within 2×MSL",
                (f"shortest gap {reused['min_gap_s']:.3f} s after the previous connection.",),
                _filters(reused["streams"]),
            )
        )
    for svc in cw["by_service"]:
        if svc["max_s"] >= cw["stuck_after_s"]:
            out.append(
                Finding(
                    Severity.WARNING,
                    f"{svc['service']} is slow to close",
                    (
                        f"CLOSE_WAIT before its FIN: p50 {svc['p50_s']:.3f} s, "
                        f"p95 {svc['p95_s']:.3f} s, max {svc['max_s']:.3f} s "
                        f"over {svc['count']} close(s).",
                    ),
                    _filters(svc["slow_streams"]),
                )
            )
    for cap in captures:
        lossy = {k: v for k, v in cap.skipped.items() if k != "ip_fragment"}
        if cap.truncated or lossy:
            out.append(
                Finding(
                    Severity.INFO,
                    f"{cap.file}: not every packet was analysed",
                    tuple(cap.warnings)
                    + tuple(f"{v} packet(s) skipped: {k}" for k, v in lossy.items()),
                    (),
                )
            )
    out.sort(key=lambda f: -f.severity)
    return out
