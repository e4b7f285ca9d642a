"""tshark as the oracle for stream numbers and frames (Wireshark's own numbering)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass
class StreamFrames:
    first_frame: int
    last_frame: int
    packets: int


def tshark_available() -> bool:
    return shutil.which("tshark") is not None


def tshark_streams(path: str) -> dict[int, StreamFrames]:
    """Per tcp.stream: first and last frame and packet count, as tshark sees them."""
    out = subprocess.run(
        ["tshark", "-n", "-r", path, "-T", "fields", "-e", "frame.number", "-e", "tcp.stream"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    streams: dict[int, StreamFrames] = {}
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1]:
            continue
        frame = int(parts[0])
        # An ICMP error quoting TCP inside a tunnel can list two streams.
        for s in {int(x) for x in parts[1].split(",")}:
            st = streams.get(s)
            if st is None:
                streams[s] = StreamFrames(frame, frame, 1)
            else:
                st.last_frame = frame
                st.packets += 1
    return streams


def tshark_reads(path: str) -> tuple[bool, str]:
    """Whether tshark reads the file without a file-level error."""
    out = subprocess.run(["tshark", "-n", "-r", path, "-c", "1"], capture_output=True,
                         text=True, check=False, timeout=60)
    err = "\n".join(line for line in out.stderr.splitlines() if "Running as user" not in line
                    and "could be dangerous" not in line)
    return out.returncode == 0 and "appears to be damaged" not in err, err.strip()
