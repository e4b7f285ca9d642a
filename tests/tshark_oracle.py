"""tshark as the oracle for stream numbers and frames (Wireshark's own numbering).

:func:`run_tshark` reads a capture with tshark's default preferences and
returns, per ``tcp.stream``, the first and last frame and the number of
frames, plus how many frames tshark saw and the error it stopped on, if any.
Results can be kept in a cache (anything with pytest's ``Cache.get/set``),
keyed by the file's content and tshark's version: tshark costs a few tenths
of a second per file, the test suite reads well over a hundred.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

#: tshark's own lines that say nothing about the file.
_NOISE = ("Running as user", "could be dangerous")


@dataclass
class StreamFrames:
    first_frame: int
    last_frame: int
    packets: int


@dataclass
class TsharkResult:
    """What tshark made of one file."""

    streams: dict[int, StreamFrames] = field(default_factory=dict)
    #: Frames tshark listed (every record it shows, TCP or not).
    frames: int = 0
    #: tshark's error message when it stopped early or could not open the file.
    error: str = ""

    @property
    def opened(self) -> bool:
        """tshark read the file as a capture (possibly only up to damage)."""
        return self.frames > 0 or not self.error

    def as_json(self) -> dict[str, Any]:
        return {
            "streams": {
                str(k): [v.first_frame, v.last_frame, v.packets] for k, v in self.streams.items()
            },
            "frames": self.frames,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TsharkResult:
        streams = {int(k): StreamFrames(*v) for k, v in d["streams"].items()}
        return cls(streams, int(d["frames"]), str(d["error"]))


class Cache(Protocol):
    def get(self, key: str, default: Any) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


def tshark_available() -> bool:
    return shutil.which("tshark") is not None


@cache
def tshark_version() -> str:
    out = subprocess.run(
        ["tshark", "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def tshark_numbering() -> str:
    """fintrace's ``--numbering`` that matches the installed tshark.

    Wireshark 4.4 starts a new stream at a SYN or SYN+ACK after a FIN or RST
    (the contract's rule, ``wireshark-4.4``, checked against 4.4.18); 4.0 does
    not (checked against 4.0.17). Releases in between were not checked.
    """
    m = re.search(r"\b(\d+)\.(\d+)\.\d+", tshark_version())
    if m is None:
        raise RuntimeError(f"cannot read tshark's version from {tshark_version()!r}")
    return "wireshark-4.4" if (int(m[1]), int(m[2])) >= (4, 4) else "wireshark-4.0"


def run_tshark(path: str | Path, cache: Cache | None = None) -> TsharkResult:
    """tshark's streams and frames for ``path`` (from ``cache`` when it has them)."""
    key = ""
    if cache is not None:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        key = f"fintrace/tshark/{hashlib.sha256(tshark_version().encode()).hexdigest()[:12]}"
        key += f"/{digest}"
        hit = cache.get(key, None)
        if hit is not None:
            return TsharkResult.from_json(hit)
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "frame.number", "-e", "tcp.stream"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    result = TsharkResult()
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if not parts[0]:
            continue
        frame = int(parts[0])
        result.frames = max(result.frames, frame)
        if len(parts) < 2 or not parts[1]:
            continue
        # An ICMP error quoting TCP inside a tunnel can list two streams.
        for s in {int(x) for x in parts[1].split(",")}:
            st = result.streams.get(s)
            if st is None:
                result.streams[s] = StreamFrames(frame, frame, 1)
            else:
                st.last_frame = frame
                st.packets += 1
    if out.returncode != 0:
        err = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith(_NOISE)]
        result.error = " ".join(err).strip() or f"tshark exit status {out.returncode}"
    if cache is not None:
        cache.set(key, result.as_json())
    return result


def tshark_streams(path: str) -> dict[int, StreamFrames]:
    """Per tcp.stream: first and last frame and packet count, as tshark sees them."""
    return run_tshark(path).streams


def tshark_reads(path: str) -> tuple[bool, str]:
    """Whether tshark reads the whole file without a file-level error."""
    r = run_tshark(path)
    return not r.error, r.error
