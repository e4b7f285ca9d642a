"""Command line: parse options into one frozen options object, make one core
call, hand the results to a renderer, exit once with a documented code.

Exit codes (``docs/cli.md``): 0 success, 1 a ``check`` rule failed, 2 bad
usage or input that cannot be read, 130 interrupted.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import os
import platform
import signal
import sys
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TextIO, cast

import click

from fintrace import COMPILED, __version__
from fintrace.commands import LazyGroup
from fintrace.errors import FintraceError, output_file
from fintrace.flowtable import NUMBERINGS
from fintrace.model import CloseType, Connection, ExitCode
from fintrace.pipeline import AnalyzeOptions, ParallelRun, Run, analyze
from fintrace.render import FORMATS, Renderer, text_renderer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@dataclass(frozen=True, slots=True)
class Filters:
    """Which connections the output lists (the summary always covers all)."""

    close_types: frozenset[str] = frozenset()
    stuck: bool = False
    ports: frozenset[int] = frozenset()
    hosts: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    streams: frozenset[int] = frozenset()

    @property
    def selects_all(self) -> bool:
        """No filter is set: every connection is listed."""
        return not (self.close_types or self.stuck or self.ports or self.hosts or self.streams)

    def __call__(self, c: Connection) -> bool:
        if self.close_types and c.close_type not in self.close_types:
            return False
        if self.stuck and not c.stuck:
            return False
        if self.ports and c.client.port not in self.ports and c.server.port not in self.ports:
            return False
        if self.streams and c.stream not in self.streams:
            return False
        if self.hosts:
            ips = (ipaddress.ip_address(c.client.ip), ipaddress.ip_address(c.server.ip))
            if not any(ip in net for net in self.hosts for ip in ips if ip.version == net.version):
                return False
        return True


def _parse_host(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IP address or network") from None


@contextlib.contextmanager
def _open_output(path: str | None) -> Iterator[TextIO]:
    """The output stream; an output that cannot be written is bad usage, not a crash."""
    if path is None or path == "-":
        try:
            yield sys.stdout
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) or exc.filename is not None:
                raise
            _silence_stdout()
            raise FintraceError(f"<stdout>: cannot write output ({exc.strerror})") from None
        return
    with output_file(path, "w", encoding="utf-8", newline="") as out:
        yield cast("TextIO", out)


def output_path(*, dash: bool) -> click.Path:
    """The type of every ``-o``: click checks nothing, opening it says what is wrong.

    click's own checks (``dir_okay=False``, ``readable``) end in its usage
    text; the commands refuse such an output in one line, exit status 2.
    """
    return click.Path(dir_okay=True, readable=False, allow_dash=dash)


def warn(run: Run) -> None:
    """Each capture's warnings on stderr, one line each, whatever the output.

    They say the analysis is incomplete (a file cut off, a damaged block, a
    link type not decoded), so ``--quiet``, which is about the progress bar,
    does not hide them.
    """
    for cap in run.captures:
        for w in cap.warnings:
            click.echo(f"fintrace: warning: {cap.file}: {w}", err=True)


class Progress:
    """A progress bar on stderr, only on a terminal.

    :attr:`callback` is what the pipeline reports to; the bar shows while the
    ``with`` block runs. A run can so be created (its captures opened) before
    the bar appears, and read inside it.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    @property
    def callback(self) -> Callable[[int, int], None] | None:
        return self.update if self.enabled else None

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import (
            Progress as Bar,
        )

        self._bar = Bar(
            "reading",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("read", total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def make_renderer(fmt: str, out: TextIO, *, limit: int | None, color: bool | None) -> Renderer:
    if fmt != "table":
        return text_renderer(fmt, out)
    from rich.console import Console

    from fintrace.render.table import TableRenderer

    console = Console(
        file=out, force_terminal=color, no_color=color is False, width=None if out.isatty() else 160
    )
    return TableRenderer(console, limit=limit)


def run_analysis(
    options: AnalyzeOptions,
    renderer: Renderer,
    keep: Callable[[Connection], bool],
    *,
    progress: bool,
    jobs: int = 1,
) -> Run:
    bar = Progress(progress)
    run = analyze(options, bar.callback, jobs=jobs)
    render(run, renderer, keep, bar)
    return run


def render(run: Run, renderer: Renderer, keep: Callable[[Connection], bool], bar: Progress) -> None:
    """Read the run into the renderer; the bar is gone before the renderer's end."""
    with bar:
        renderer.begin(run)
        conns = run.connections()
        if not (isinstance(keep, Filters) and keep.selects_all):
            conns = filter(keep, conns)
        # The loop in C: as Python code, with the filter's call, it cost about
        # 2,000 instructions a connection (callgrind), and a capture may hold millions.
        collections.deque(map(renderer.connection, conns), maxlen=0)
    renderer.end(run)


def render_parts(
    run: ParallelRun,
    renderer: Renderer,
    out: TextIO,
    *,
    fmt: str,
    keep: Callable[[Connection], bool],
    limit: int | None,
    bar: Progress,
) -> None:
    """:func:`render` for a parallel run: each file's worker renders its connections.

    The parent writes the head, then each file's part as soon as that file
    is done, in file order, then the tail: the output is the same as
    :func:`render` gives, and no file's connections are held here.
    """
    from fintrace.render.parts import PartWriter, Splicer

    splicer = Splicer(renderer, out)
    with bar:
        renderer.begin(run)
        with contextlib.closing(run.parts(PartWriter(fmt, keep, limit))) as parts:
            for part in parts:
                splicer.add(part.path, part.value)
    renderer.end(run)


class _Interrupts:
    """Ctrl-C raises KeyboardInterrupt, as by default, and is remembered.

    Python swallows an exception raised in a finalizer (a generator closed as
    it is freed, say) and only prints "Exception ignored"; a Ctrl-C that lands
    there must still end the command with status 130.
    """

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt


@contextlib.contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """One exit point: a one-line error and status 2, or 130 on Ctrl-C."""
    interrupts = _Interrupts()
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        # Python's own handler only: a Ctrl-C ignored by whoever started us
        # (a background job of a shell script) stays ignored.
        try:
            signal.signal(signal.SIGINT, interrupts)
        except ValueError:  # not the main thread: Ctrl-C cannot reach us here
            previous = None
    else:
        previous = None
    try:
        yield
        if interrupts.seen:
            raise KeyboardInterrupt
    except FintraceError as exc:
        if debug:
            raise
        click.echo(f"fintrace: error: {exc}", err=True)
        sys.exit(ExitCode.BAD_INPUT)
    except KeyboardInterrupt:
        if debug:
            raise
        click.echo("fintrace: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # The reader of our output went away (``| head``): not an error of ours.
        with contextlib.suppress(OSError):
            sys.stdout = open("/dev/null", "w")  # noqa: SIM115
        sys.exit(ExitCode.OK)
    except OSError as exc:
        # Inputs are read through the reader, which raises FintraceError, and
        # every output file is opened by _open_output or pcapwrite, which name
        # it: what is left is standard output written directly (show's
        # ladder, check's verdicts), which a full disk fails as well.
        if debug:
            raise
        _silence_stdout()
        if exc.filename is not None:
            message = f"{exc.filename}: {exc.strerror}"
        else:
            message = f"<stdout>: cannot write output ({exc.strerror})"
        click.echo(f"fintrace: error: {message}", err=True)
        sys.exit(ExitCode.BAD_INPUT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _silence_stdout() -> None:
    """Python flushes stdout again at exit; after a failed write, let that land nowhere."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


#: Options that ``show`` shares with the commands of :func:`analysis_options`.
stuck_after_option = click.option(
    "--stuck-after",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Idle time after which a CLOSE_WAIT counts as stuck.",
)
numbering_option = click.option(
    "--numbering",
    type=click.Choice(NUMBERINGS),
    default=NUMBERINGS[0],
    show_default=True,
    help="Number streams as this Wireshark release does (4.4 also starts a new "
    "stream at a SYN or SYN+ACK after a FIN or RST).",
)
color_option = click.option("--color/--no-color", default=None, help="Force colour on or off.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks.")


def analysis_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by the commands that analyse captures."""
    opts = [
        click.argument(
            "captures",
            nargs=-1,
            required=True,
            # The reader names an unreadable capture in one line; click's check would not.
            type=click.Path(dir_okay=True, readable=False, allow_dash=False),
        ),
        click.option(
            "--separate",
            is_flag=True,
            help="Analyse each file on its own instead of as one continuous capture.",
        ),
        stuck_after_option,
        click.option(
            "--msl",
            type=click.FloatRange(min=0, min_open=True),
            default=30.0,
            show_default=True,
            metavar="SECONDS",
            help="Maximum segment lifetime; TIME_WAIT lasts 2×MSL.",
        ),
        click.option(
            "--linger",
            type=click.FloatRange(min=0),
            default=None,
            metavar="SECONDS",
            help="Packet time a closed or reset connection waits for late segments "
            "before it is reported [default: 30 s, at most 2×MSL; 'inf' keeps all].",
        ),
        numbering_option,
        click.option(
            "--ephemeral-ports",
            type=click.IntRange(min=1),
            default=28232,
            show_default=True,
            help="Size of the clients' ephemeral port range.",
        ),
        click.option(
            "--close-type",
            "close_types",
            multiple=True,
            type=click.Choice([c.value for c in CloseType]),
            help="Only list connections of this close type (repeatable).",
        ),
        click.option("--stuck", is_flag=True, help="Only list stuck CLOSE_WAIT connections."),
        click.option(
            "--port",
            "ports",
            multiple=True,
            type=click.IntRange(0, 65535),
            help="Only list connections with this port on either side (repeatable).",
        ),
        click.option(
            "--host",
            "hosts",
            multiple=True,
            help="Only list connections with this address or network on either side.",
        ),
        click.option(
            "--stream",
            "streams",
            multiple=True,
            type=click.IntRange(min=0),
            help="Only list this tcp.stream (repeatable).",
        ),
        quiet_option,
        debug_option,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def build_options(
    *,
    captures: tuple[str, ...],
    separate: bool,
    stuck_after: float,
    msl: float,
    linger: float | None,
    numbering: str,
    ephemeral_ports: int,
    trace: frozenset[int] | None = None,
) -> AnalyzeOptions:
    return AnalyzeOptions(
        paths=tuple(captures),
        separate=separate,
        stuck_after=stuck_after,
        msl=msl,
        linger=linger,
        numbering=numbering,
        ephemeral_ports=ephemeral_ports,
        trace_streams=trace,
    )


def from_params(params: dict[str, Any]) -> tuple[AnalyzeOptions, Filters]:
    """The options and filters of :func:`analysis_options`, from a command's keywords."""
    options = build_options(
        **{
            k: params[k]
            for k in (
                "captures",
                "separate",
                "stuck_after",
                "msl",
                "linger",
                "numbering",
                "ephemeral_ports",
            )
        }
    )
    keep = build_filters(
        **{k: params[k] for k in ("close_types", "stuck", "ports", "hosts", "streams")}
    )
    return options, keep


def build_filters(
    *,
    close_types: tuple[str, ...],
    stuck: bool,
    ports: tuple[int, ...],
    hosts: tuple[str, ...],
    streams: tuple[int, ...],
) -> Filters:
    return Filters(
        frozenset(close_types),
        stuck,
        frozenset(ports),
        tuple(_parse_host(h) for h in hosts),
        frozenset(streams),
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__,
    prog_name="fintrace",
    # The form and the interpreter: both move its speed (docs/performance.md).
    message="%(prog)s %(version)s ("
    + ("compiled" if COMPILED else "pure Python")
    + f", {platform.python_implementation()} {platform.python_version()})",
)
def main() -> None:
    """How every TCP connection in a packet capture ended."""


@main.command("analyze")
@analysis_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Output format [default: table on a terminal, jsonl otherwise].",
)
@click.option(
    "--output",
    "-o",
    type=output_path(dash=True),
    default=None,
    help="Write the output here instead of standard output.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Rows of the table format's connection list (0: all).",
)
@color_option
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Analyse files in this many processes (needs --separate).",
)
def analyze_cmd(
    *,
    jobs: int,
    quiet: bool,
    debug: bool,
    fmt: str | None,
    output: str | None,
    limit: int,
    color: bool | None,
    **params: Any,
) -> None:
    """Classify how every TCP connection in CAPTURES ended."""
    with _errors(debug):
        options, keep = from_params(params)
        bar = Progress(not quiet and sys.stderr.isatty())
        # Every capture is opened here: one that cannot be read stops the
        # command before the output exists (no empty file left behind).
        run = analyze(options, bar.callback, jobs=jobs)
        with _open_output(output) as out:
            if fmt is None:
                fmt = "table" if out.isatty() else "jsonl"
            renderer = make_renderer(fmt, out, limit=limit or None, color=color)
            if isinstance(run, ParallelRun):
                render_parts(run, renderer, out, fmt=fmt, keep=keep, limit=limit or None, bar=bar)
            else:
                render(run, renderer, keep, bar)
        warn(run)
    sys.exit(ExitCode.OK)


def stderr_is_terminal(stream: IO[str] | None = None) -> bool:
    return (stream or sys.stderr).isatty()
