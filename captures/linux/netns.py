"""Two network namespaces joined by a veth pair, and the tools run inside them.

Everything here is started by the recorder and stopped by it: namespaces are
named after the recorder's PID, processes are ended by their own PID, and the
namespaces (with their veth ends) are deleted on the way out, failure or not.
Addresses are private ones inside those namespaces only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
TIMEOUT_S = 10.0
#: Larger than any packet recorded (offload makes segments of a few KB).
SNAPLEN = 16384

_libc = ctypes.CDLL(None, use_errno=True)


class LabError(RuntimeError):
    """The lab could not be built or a tool in it failed."""


def sh(*args: str, ns: str | None = None, timeout: float = TIMEOUT_S) -> str:
    """Run a command (inside ``ns`` when given); its stdout, or LabError."""
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out: {' '.join(cmd)}") from e
    if done.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass(frozen=True, slots=True)
class Side:
    """One namespace: its name, its veth end and its addresses."""

    ns: str
    dev: str
    ipv4: str
    ipv6: str

    def addr(self, family: int) -> str:
        return self.ipv4 if family == socket.AF_INET else self.ipv6


@dataclass(slots=True)
class Lab:
    """Client and server namespaces; sockets are made inside them with setns(2)."""

    client: Side
    server: Side
    _home: int = -1
    _fds: dict[str, int] = field(default_factory=dict)

    def socket(self, side: Side, family: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket living in ``side``'s namespace (it stays there after setns back)."""
        _setns(self._fds[side.ns])
        try:
            s = socket.socket(family, kind)
        finally:
            _setns(self._home)
        s.settimeout(TIMEOUT_S)
        return s

    def ss(self, side: Side) -> str:
        return sh("ss", "-tanoi", ns=side.ns)


def _build(pid: int) -> Lab:
    client = Side(f"ftc{pid}", f"ftc{pid}", "10.77.0.1", "fd77::1")
    server = Side(f"fts{pid}", f"fts{pid}", "10.77.0.2", "fd77::2")
    for side in (client, server):
        sh("ip", "netns", "add", side.ns)
    sh(
        "ip",
        "link",
        "add",
        client.dev,
        "netns",
        client.ns,
        "type",
        "veth",
        "peer",
        "name",
        server.dev,
        "netns",
        server.ns,
    )
    for side in (client, server):
        sh("ip", "link", "set", "lo", "up", ns=side.ns)
        # No link-local address: fewer IPv6 housekeeping packets in the capture.
        sh("ip", "link", "set", side.dev, "addrgenmode", "none", ns=side.ns)
        sh("ip", "addr", "add", f"{side.ipv4}/24", "dev", side.dev, ns=side.ns)
        # nodad: a tentative address cannot be bound, and DAD would take a second.
        sh("ip", "addr", "add", f"{side.ipv6}/64", "dev", side.dev, "nodad", ns=side.ns)
        sh("ip", "link", "set", side.dev, "up", ns=side.ns)
    return Lab(client, server)


@contextmanager
def lab() -> Iterator[Lab]:
    """Build the two namespaces; always delete them (and so the veth pair) afterwards."""
    pid = os.getpid()
    names = (f"ftc{pid}", f"fts{pid}")
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        the_lab = _build(pid)
        the_lab._home = home
        for ns in names:
            the_lab._fds[ns] = os.open(f"{NETNS_DIR}/{ns}", os.O_RDONLY)
        yield the_lab
    finally:
        for ns in names:
            with contextlib.suppress(LabError):
                sh("ip", "netns", "del", ns)
        os.close(home)
        with contextlib.suppress(NameError):
            for fd in the_lab._fds.values():
                os.close(fd)


def sysctl(side: Side, key: str, value: str) -> str:
    """Set a per-namespace sysctl; the old value, to put back."""
    old = sh("sysctl", "-n", key, ns=side.ns).strip()
    sh("sysctl", "-q", "-w", f"{key}={value}", ns=side.ns)
    return old


def pure_ack(family: int, src: tuple[str, int], dst: tuple[str, int]) -> str:
    """A filter for segments from ``src`` to ``dst`` with only the ACK flag set."""
    if family == socket.AF_INET:
        return (
            f"ip src {src[0]} and ip dst {dst[0]} and tcp src port {src[1]} "
            f"and tcp dst port {dst[1]} and tcp[13] == 0x10"
        )
    # libpcap cannot index TCP over IPv6: the TCP header follows the fixed
    # 40-byte IPv6 header (Linux adds no extension headers here).
    return (
        f"ip6 src {src[0]} and ip6 dst {dst[0]} and ip6[6] == 6 "
        f"and ip6[40:2] == {src[1]} and ip6[42:2] == {dst[1]} and ip6[53] == 0x10"
    )


def bpf_drop(expr: str) -> str:
    """Classic BPF for ``tc ... bpf da``: drop (TC_ACT_SHOT) what ``expr`` matches.

    tcpdump compiles the expression; its accept return becomes TC_ACT_SHOT (2)
    and its reject return TC_ACT_UNSPEC (-1, continue). In direct-action mode no
    action module is needed, and this kernel has no act_gact.
    """
    lines = sh("tcpdump", "-ddd", expr).split("\n")
    verdicts = {"6 0 0 0": "6 0 0 4294967295"}
    out = [verdicts.get(x, "6 0 0 2" if x.startswith("6 0 0 ") else x) for x in lines if x]
    return ",".join(out)


@contextmanager
def dropping(side: Side, expr: str) -> Iterator[None]:
    """Drop segments matching ``expr`` as they arrive at ``side`` (after the capture point)."""
    sh("tc", "qdisc", "add", "dev", side.dev, "clsact", ns=side.ns)
    try:
        sh(
            "tc",
            "filter",
            "add",
            "dev",
            side.dev,
            "ingress",
            "bpf",
            "da",
            "bytecode",
            bpf_drop(expr),
            ns=side.ns,
        )
        yield
    finally:
        sh("tc", "qdisc", "del", "dev", side.dev, "clsact", ns=side.ns)


@contextmanager
def slow_link(lab: Lab, rate: str) -> Iterator[None]:
    """A token bucket on both veth ends: bytes queued there hold later segments back."""
    for side in (lab.client, lab.server):
        sh(
            "tc",
            "qdisc",
            "add",
            "dev",
            side.dev,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "1600",
            "limit",
            "200000",
            ns=side.ns,
        )
    try:
        yield
    finally:
        for side in (lab.client, lab.server):
            with contextlib.suppress(LabError):
                sh("tc", "qdisc", "del", "dev", side.dev, "root", ns=side.ns)


@dataclass(slots=True)
class Recorder:
    """One capture process (tcpdump or dumpcap) started by us, stopped by its PID."""

    path: Path
    argv: list[str]
    ready_word: str
    proc: subprocess.Popen[bytes] | None = None
    stderr: str = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + TIMEOUT_S
        seen = b""
        # Traffic may only start once the capture is really listening.
        while self.ready_word.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise LabError(f"{self.argv[0:5]} did not start: {seen.decode(errors='replace')}")
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                seen += os.read(self.proc.stderr.fileno(), 4096)
        self.stderr = seen.decode(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            _, err = self.proc.communicate(timeout=TIMEOUT_S)
        self.stderr += err.decode(errors="replace")

    def check(self) -> None:
        """Fail unless the capture stopped cleanly with every packet kept."""
        if "\n0 packets dropped by kernel" not in self.stderr:
            raise LabError(f"{self.path.name}: packets lost or not stopped: {self.stderr}")


def tcpdump(side: Side, path: Path, *, iface: str, extra: tuple[str, ...] = ()) -> Recorder:
    # The ring holds buffer/snaplen frames: with the default 256 KiB snaplen and
    # 2 MiB buffer that is 8 packets, and a busy machine overruns it.
    # --immediate-mode: without it libpcap hands packets over a block at a
    # time, and the last block is lost when tcpdump is stopped.
    argv = [
        "ip",
        "netns",
        "exec",
        side.ns,
        "tcpdump",
        "-i",
        iface,
        "-n",
        "-U",
        "--immediate-mode",
        "-s",
        str(SNAPLEN),
        "-B",
        "16384",
        "-Z",
        "root",
        "-w",
        str(path),
        *extra,
    ]
    return Recorder(path, argv, "listening on")
