#!/usr/bin/env python3
"""Record real Linux TCP closes in two network namespaces, with the kernel's own labels.

Run as root: ``python captures/record_linux.py [OUT_DIR]`` (default: ``linux/``
beside this script). It builds a client and a server namespace joined by a
veth pair, captures on the client's veth end, drives every scenario of
``linux/scenarios.py`` over IPv4 then IPv6, reads ``ss -tanoi`` in both
namespaces, stops everything it started and deletes the namespaces.

It writes four captures of the same traffic and their labels:

- ``linux_veth.pcap``: tcpdump on the client's veth end (Ethernet, µs);
- ``linux_any_sll.pcap``: tcpdump ``-i any -y LINUX_SLL`` in the client namespace;
- ``linux_any_sll2.pcap``: the same with ``-y LINUX_SLL2``, nanosecond timestamps;
- ``linux_veth.pcapng``: the first one converted by editcap;
- ``labels.json``: per connection, what the script did and what fintrace must
  say, every value sourced from the script, ``ss`` or tshark (never fintrace);
- ``ss_client.txt``, ``ss_server.txt``: the raw ``ss -tanoi`` at the end.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from linux import netns, wire
from linux.driver import Ctx
from linux.labels import LabelError, build
from linux.scenarios import run_all

HERE = Path(__file__).resolve().parent
CAPTURE_POINT = (
    "the client's veth end, in the client namespace: segments appear when the client "
    "sends them (after its qdisc) or receives them (before its ingress filter); the "
    "dropped ACK of lost_final_ack is dropped at the server's ingress, so it is in the "
    "capture. Frame numbers in 'wire' are those of linux_veth.pcap."
)
FILES = {
    "linux_veth.pcap": "tcpdump -i <client veth> (Ethernet, microseconds)",
    "linux_any_sll.pcap": "tcpdump -i any -y LINUX_SLL in the client namespace",
    "linux_any_sll2.pcap": "tcpdump -i any -y LINUX_SLL2 --time-stamp-precision=nano",
    "linux_veth.pcapng": "linux_veth.pcap converted by editcap -F pcapng",
}


def _recorders(lab: netns.Lab, out: Path) -> list[netns.Recorder]:
    dev = lab.client.dev
    return [
        netns.tcpdump(lab.client, out / "linux_veth.pcap", iface=dev),
        netns.tcpdump(
            lab.client, out / "linux_any_sll.pcap", iface="any", extra=("-y", "LINUX_SLL")
        ),
        netns.tcpdump(
            lab.client,
            out / "linux_any_sll2.pcap",
            iface="any",
            extra=("-y", "LINUX_SLL2", "--time-stamp-precision=nano"),
        ),
    ]


def _version(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    return (done.stdout or done.stderr).splitlines()[0].strip()


def _same_traffic(files: dict[str, wire.Capture]) -> None:
    """Every variant holds the same TCP segments with the same stream numbers."""

    def shape(segs: list[wire.Seg]) -> list[tuple[Any, ...]]:
        return [(s.stream, s.src, s.sport, s.dport, s.flags, s.seq, s.ack, s.length) for s in segs]

    reference = shape(files["linux_veth.pcap"].segs)
    for name, cap in files.items():
        if shape(cap.segs) != reference:
            raise LabelError(f"{name} does not hold the same TCP segments as linux_veth.pcap")


def record(out: Path) -> dict[str, Any]:
    """Record every scenario into ``out``; the label document (also written there)."""
    out.mkdir(parents=True, exist_ok=True)
    with netns.lab() as lab:
        recorders = _recorders(lab, out)
        conns: list[Any] = []
        held: list[socket.socket] = []
        try:
            for r in recorders:
                r.start()
            started = time.monotonic()
            for family in (socket.AF_INET, socket.AF_INET6):
                run_all(Ctx(lab, family, conns, held))
            ss_client, ss_server = lab.ss(lab.client), lab.ss(lab.server)
            seconds = time.monotonic() - started
        finally:
            for r in recorders:
                r.stop()
            for s in held:
                s.close()
    for r in recorders:
        r.check()
    # dumpcap announces itself before it captures, so a pcapng of its own
    # would miss the first packets: convert instead.
    netns.sh(
        "editcap", "-F", "pcapng", str(out / "linux_veth.pcap"), str(out / "linux_veth.pcapng")
    )
    files = {name: wire.read(out / name) for name in FILES}
    _same_traffic(files)
    labels, surprises = build(conns, ss_client, ss_server, files)
    doc = {
        "made_by": "captures/record_linux.py",
        "kernel": platform.release(),
        "tools": [_version("tcpdump", "--version"), _version("ss", "-V"), _version("tshark", "-v")],
        "capture_point": CAPTURE_POINT,
        "files": FILES,
        "seconds": round(seconds, 1),
        "end_state_names": "ss names mapped to TEARDOWN.md's (ESTAB→ESTABLISHED, "
        "TIME-WAIT→TIME_WAIT, ...); a side ss no longer lists is CLOSED "
        "(freed after its FIN was acknowledged) or RESET (freed by a RST)",
        "surprises": surprises,
        "connections": labels,
    }
    (out / "labels.json").write_text(json.dumps(doc, indent=1) + "\n")
    # ss pads its lines to a terminal width it does not have.
    for name, text in (("ss_client.txt", ss_client), ("ss_server.txt", ss_server)):
        (out / name).write_text("".join(line.rstrip() + "\n" for line in text.splitlines()))
    return doc


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "linux"
    doc = record(out)
    for s in doc["surprises"]:
        print("kernel differs from the prediction:", s)
    print(f"{len(doc['connections'])} connections recorded in {doc['seconds']} s into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
