"""The one error family of fintrace.

Per-packet trouble never raises: it becomes a counted skip reason or a named
anomaly. File-level trouble raises :class:`FintraceError`, which the CLI turns
into a one-line message and exit status 2.
"""

from __future__ import annotations


class FintraceError(Exception):
    """A problem with an input or output as a whole; the message is one line."""


class CaptureError(FintraceError):
    """A file that cannot be read as a capture at all."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
