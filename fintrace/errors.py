"""The one error family of fintrace.

Per-packet trouble never raises: it becomes a counted skip reason or a named
anomaly. File-level trouble raises :class:`FintraceError`, which the CLI turns
into a one-line message and exit status 2; :func:`output_file` makes the
errors of writing an output file into one.
"""

from __future__ import annotations

import contextlib
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator


class FintraceError(Exception):
    """A problem with an input or output as a whole; the message is one line."""


class CaptureError(FintraceError):
    """A file that cannot be read as a capture at all."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@contextlib.contextmanager
def output_file(path: str, mode: str, **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)``, closed at the end; failing to open or to write it
    (a full disk, a vanished share) is a :class:`FintraceError` naming it.

    An :class:`OSError` that names a file is an input's, raised as it is.
    """
    try:
        out = open(path, mode, **kwargs)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise FintraceError(f"{path}: cannot write output ({exc.strerror})") from None
    try:
        with out:
            yield out
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise FintraceError(f"{path}: cannot write output ({exc.strerror})") from None
