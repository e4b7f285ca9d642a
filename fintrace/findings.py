"""Turn a run's summary into findings: what an engineer should look at first.

:func:`findings` reads the summary of :mod:`fintrace.aggregate` (and the
captures' skip counts) and returns :class:`Finding` records, most severe
first; within one severity, in the order of the list below. Each carries
the numbers behind it and, per capture file, a Wireshark display filter that
opens its evidence. An empty list means nothing is wrong.

``kind`` names what was found; it is stable (renderers and scripts key on
it):

``stuck_close_wait`` (critical)
    per service: connections left in CLOSE_WAIT, idle past ``--stuck-after``.
``reset_data_lost`` (critical)
    RSTs that threw away data the peer had sent and the sender never
    acknowledged.
``port_exhaustion`` (critical from 50 %, warning from 5 %)
    per (client, server ip, server port): TIME_WAIT peak against the
    ephemeral port range.
``fin_wait_2`` (warning)
    per host: active closers left waiting in FIN_WAIT_2 for a peer that
    never closes (the other side of ``stuck_close_wait``).
``slow_close`` (warning when p95, info when only the maximum, reaches 1 s)
    per service: completed closes whose CLOSE_WAIT lasted long.
``tuple_reuse`` (warning)
    new SYNs on a 4-tuple within 2×MSL of its previous connection.
``resets`` (warning; info when every RST came after the close)
    per sending host: connections ended by RST, by phase.
``unanswered`` (warning)
    per service: SYNs that got no answer at all.
``unacked_fin`` (info)
    FINs never acknowledged.
``capture_incomplete`` (info)
    packets skipped or a damaged file.

TIME_WAIT holders per host are not a finding (an active closer holding
TIME_WAIT is TCP working as designed); the report shows them as a summary
section, and ``port_exhaustion`` is the finding when they come to matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Final

from fintrace.model import NOT_A_LOSS, SkipReason
from fintrace.pipeline import CaptureInfo

if TYPE_CHECKING:
    from collections.abc import Sequence


#: How many items of one kind become findings; the rest are summed up.
TOP: Final = 5
#: Shares of the ephemeral port range held in TIME_WAIT that are worth a finding.
EXHAUSTION_WARNING = 0.05
EXHAUSTION_CRITICAL = 0.5


class Severity(IntEnum):
    INFO = 1
    WARNING = 2
    CRITICAL = 3


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    title: str
    details: tuple[str, ...]
    #: (capture file, Wireshark display filter for the evidence)
    filters: tuple[tuple[str, str], ...]
    #: What was found (see the module docstring).
    kind: str = ""


def stream_filter(streams: Sequence[int]) -> str:
    """A Wireshark display filter selecting these ``tcp.stream`` numbers."""
    if len(streams) == 1:
        return f"tcp.stream eq {streams[0]}"
    # Wireshark 4.0 requires commas between set elements (whitespace alone is an error).
    return "tcp.stream in {" + ", ".join(str(s) for s in streams) + "}"


def duration(seconds: float) -> str:
    """A span of time as a person reads it."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def size(n: int) -> str:
    if n < 10_000:
        return f"{n} bytes"
    if n < 10_000_000:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1048576:.1f} MiB"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _filters(evidence: dict[str, list[int]]) -> tuple[tuple[str, str], ...]:
    return tuple((cap, stream_filter(streams)) for cap, streams in evidence.items() if streams)


def _shown(evidence: dict[str, list[int]], total: int) -> tuple[str, ...]:
    shown = sum(len(s) for s in evidence.values())
    if shown < total:
        return (f"The filter opens {shown} of the {total} connections (the most telling ones).",)
    return ()


def _address_filter(client_ip: str, server_ip: str, port: int) -> str:
    field = "ipv6.addr" if ":" in server_ip else "ip.addr"
    return f"{field} == {client_ip} && {field} == {server_ip} && tcp.port == {port}"


def findings(summary: dict[str, Any], captures: Sequence[CaptureInfo]) -> list[Finding]:
    """What is wrong in the run, most severe first; empty when nothing is."""
    out: list[Finding] = []
    out += _stuck_close_wait(summary["close_wait"])
    out += _data_lost(summary["resets"]["lost_data"])
    out += _exhaustion(summary["time_wait"])
    out += _fin_wait_2(summary["close_wait"])
    out += _slow_close(summary["close_wait"])
    out += _reuse(summary["time_wait"])
    out += _resets(summary["resets"])
    out += _unanswered(summary.get("attempts", {"by_service": []}))
    out += _unacked_fin(summary.get("unacked_fin", {"count": 0}))
    out += _incomplete(captures)
    # sort() is stable: within one severity the order above holds.
    out.sort(key=lambda f: -f.severity)
    return out


def _stuck_close_wait(cw: dict[str, Any]) -> list[Finding]:
    out = []
    for svc in cw["stuck_by_service"][:TOP]:
        n = svc["count"]
        details = [
            f"{plural(n, 'connection')} got the peer's FIN, acknowledged it and never "
            f"closed (no FIN, no RST), idle at least {duration(cw['stuck_after_s'])} "
            f"when the capture ended; the oldest had waited {duration(svc['oldest_s'])}.",
            "The application holds sockets it has finished with: look for a descriptor "
            "leak, a pool that never returns connections, or a blocked worker.",
        ]
        if svc.get("open"):
            details.append(
                f"{plural(svc['open'], 'more connection')} in CLOSE_WAIT for less than "
                f"{duration(cw['stuck_after_s'])}."
            )
        out.append(
            Finding(
                Severity.CRITICAL,
                f"{svc['service']} leaves connections in CLOSE_WAIT: {n} stuck, "
                f"oldest {duration(svc['oldest_s'])}",
                tuple(details) + _shown(svc["streams"], n),
                _filters(svc["streams"]),
                "stuck_close_wait",
            )
        )
    return out + _more(
        cw["stuck_by_service"], "services with stuck CLOSE_WAIT", "count", Severity.CRITICAL
    )


def _data_lost(lost: dict[str, Any]) -> list[Finding]:
    if not lost["count"]:
        return []
    senders = "; ".join(
        f"{h['host']}: {plural(h['count'], 'RST')}, {size(h['bytes'])}"
        for h in lost.get("by_host", [])[:TOP]
    )
    details: tuple[str, ...] = (
        f"The sender of the RST had not acknowledged {size(lost['bytes'])} its peer sent: "
        "a request or response was thrown away, not delivered.",
    )
    if senders:
        details += (f"Sent by {senders}.",)
    return [
        Finding(
            Severity.CRITICAL,
            f"{plural(lost['count'], 'reset')} threw away {size(lost['bytes'])} of "
            "unacknowledged data",
            details + _shown(lost["streams"], lost["count"]),
            _filters(lost["streams"]),
            "reset_data_lost",
        )
    ]


def _exhaustion(tw: dict[str, Any]) -> list[Finding]:
    out = []
    risky = [t for t in tw["by_tuple"] if t["share_of_ephemeral"] >= EXHAUSTION_WARNING]
    for t in risky[:TOP]:
        share = t["share_of_ephemeral"]
        server = f"{host_text(t['server_ip'])}:{t['server_port']}"
        out.append(
            Finding(
                Severity.CRITICAL if share >= EXHAUSTION_CRITICAL else Severity.WARNING,
                f"{t['client_ip']} → {server}: {t['peak']} ports in TIME_WAIT at once, "
                f"{share * 100:.1f}% of the ephemeral range",
                (
                    f"Each TIME_WAIT holds one of the client's {tw['ephemeral_ports']} ephemeral "
                    f"ports toward {server} for 2×MSL = {duration(tw['window_s'])}; when they run "
                    "out, connect() fails (EADDRNOTAVAIL).",
                    "Reuse connections (keep-alive, pooling), or let the server close first.",
                ),
                (("", _address_filter(t["client_ip"], t["server_ip"], t["server_port"])),),
                "port_exhaustion",
            )
        )
    return out


def _fin_wait_2(cw: dict[str, Any]) -> list[Finding]:
    out = []
    for w in cw.get("fin_wait_2", [])[:TOP]:
        peers = ", ".join(f"{name} ({n})" for name, n in list(w["peers"].items())[:TOP])
        out.append(
            Finding(
                Severity.WARNING,
                f"{w['host']} waits in FIN_WAIT_2 on {plural(w['count'], 'connection')}, "
                f"longest {duration(w['longest_s'])}",
                (
                    f"It closed first and its FIN was acknowledged, but the peer never "
                    f"closed: waiting on {peers}.",
                    "Linux gives up on an orphaned FIN_WAIT_2 after net.ipv4.tcp_fin_timeout "
                    "(60 s); the peer then gets a RST when it finally writes.",
                    *_shown(w["streams"], w["count"]),
                ),
                _filters(w["streams"]),
                "fin_wait_2",
            )
        )
    return out


def _slow_close(cw: dict[str, Any]) -> list[Finding]:
    out = []
    slow_after = cw.get("slow_after_s", 1.0)
    for svc in cw["by_service"]:
        if svc["max_s"] < slow_after:
            continue
        typical = svc["p95_s"] >= slow_after
        out.append(
            Finding(
                Severity.WARNING if typical else Severity.INFO,
                f"{svc['service']} is slow to close: p95 {duration(svc['p95_s'])}, "
                f"max {duration(svc['max_s'])}",
                (
                    f"Time from acknowledging the peer's FIN to sending its own, over "
                    f"{plural(svc['count'], 'completed close')}: p50 {duration(svc['p50_s'])}, "
                    f"p95 {duration(svc['p95_s'])}, max {duration(svc['max_s'])}; "
                    f"{svc['slow']} took {duration(slow_after)} or more.",
                    *_shown(svc["slow_streams"], svc["slow"]),
                ),
                _filters(svc["slow_streams"]),
                "slow_close",
            )
        )
    return out


def _reuse(tw: dict[str, Any]) -> list[Finding]:
    reused = tw["reused_within_2msl"]
    if not reused["count"]:
        return []
    failed = reused.get("failed", 0)
    details: tuple[str, ...] = (
        f"The shortest gap was {duration(reused['min_gap_s'])} after the previous "
        f"connection's last packet; a side still in TIME_WAIT (2×MSL = "
        f"{duration(tw['window_s'])}) may refuse or confuse the new connection.",
    )
    if failed:
        details += (f"{failed} of them never got established.",)
    return [
        Finding(
            Severity.WARNING,
            f"{plural(reused['count'], 'new connection')} reused a 4-tuple within 2×MSL",
            details + _shown(reused["streams"], reused["count"]),
            _filters(reused["streams"]),
            "tuple_reuse",
        )
    ]


#: What each reset phase means, for a person.
PHASES = {
    "refused": "refused (RST answering the SYN)",
    "handshake": "during the handshake",
    "established": "while established, before any FIN (abortive close)",
    "closing": "during the close (after a FIN)",
    "closed": "after both FINs were acknowledged",
    "unknown": "at an unknown point",
}


def _resets(resets: dict[str, Any]) -> list[Finding]:
    out = []
    for h in resets.get("by_host", [])[:TOP]:
        phases = h["phases"]
        benign = set(phases) == {"closed"}
        role = "" if h["role"] == "both" else f" (as {h['role']})"
        out.append(
            Finding(
                Severity.INFO if benign else Severity.WARNING,
                f"{h['host']}{role} ended {plural(h['count'], 'connection')} with a RST",
                tuple(f"{n} {PHASES.get(p, p)}" for p, n in phases.items())
                + _shown(h["streams"], h["count"]),
                _filters(h["streams"]),
                "resets",
            )
        )
    return out + _more(resets.get("by_host", []), "hosts that sent RSTs", "count", Severity.WARNING)


def _unanswered(attempts: dict[str, Any]) -> list[Finding]:
    out = []
    for svc in attempts["by_service"][:TOP]:
        out.append(
            Finding(
                Severity.WARNING,
                f"{svc['service']} did not answer {plural(svc['count'], 'connection attempt')}",
                (
                    "The SYN got neither SYN+ACK nor RST in the capture: host down, "
                    "a firewall dropping, or a full accept queue.",
                    *_shown(svc["streams"], svc["count"]),
                ),
                _filters(svc["streams"]),
                "unanswered",
            )
        )
    return out + _more(
        attempts["by_service"], "services that did not answer", "count", Severity.WARNING
    )


def _unacked_fin(unacked: dict[str, Any]) -> list[Finding]:
    if not unacked["count"]:
        return []
    return [
        Finding(
            Severity.INFO,
            f"{plural(unacked['count'], 'FIN')} never acknowledged",
            (
                "The peer went silent after the FIN, or the capture ended first.",
                *_shown(unacked["streams"], unacked["count"]),
            ),
            _filters(unacked["streams"]),
            "unacked_fin",
        )
    ]


def _incomplete(captures: Sequence[CaptureInfo]) -> list[Finding]:
    out = []
    for cap in captures:
        lossy = {k: v for k, v in cap.skipped.items() if SkipReason(k) not in NOT_A_LOSS}
        if cap.truncated or lossy:
            out.append(
                Finding(
                    Severity.INFO,
                    f"{cap.file}: not every packet was analysed",
                    tuple(cap.warnings)
                    + tuple(f"{v} packet(s) skipped: {k}" for k, v in lossy.items()),
                    (),
                    "capture_incomplete",
                )
            )
    return out


def _more(items: list[dict[str, Any]], what: str, key: str, severity: Severity) -> list[Finding]:
    """One line for the items past the first TOP, so nothing is hidden silently."""
    rest = items[TOP:]
    if not rest:
        return []
    return [
        Finding(
            severity,
            f"{len(rest)} more {what} ({sum(r[key] for r in rest)} connections)",
            ("--format json lists them all in summary.",),
            (),
            "more",
        )
    ]


def host_text(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
