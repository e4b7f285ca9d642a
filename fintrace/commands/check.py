"""``fintrace check``: fail a CI job when connections stop closing properly.

Options and the policy become one frozen :class:`~fintrace.policy.Policy`;
one core call runs the analysis with a :class:`~fintrace.check.Checker` as
its renderer; the verdicts are written as text (and as JUnit XML, GitHub
Actions annotations); one exit: 0 every rule holds, 1 one failed, 2 bad
usage or an unreadable input (``docs/cli.md``).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fintrace.check import Checker, RuleResult, failed
from fintrace.cli import (
    _errors,
    analysis_options,
    from_params,
    output_path,
    run_analysis,
    warn,
)
from fintrace.errors import FintraceError
from fintrace.model import CloseType, ExitCode
from fintrace.policy import (
    Policy,
    PolicyError,
    Rule,
    load_policy_file,
    load_pyproject,
    parse_value,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

#: option name → rule name, for the rules that take one number
_NUMBER_OPTIONS = (
    "max_close_wait",
    "max_stuck",
    "max_reset_ratio",
    "max_time_wait_peak",
    "max_port_exhaustion",
    "max_close_wait_s",
)


def build_policy(
    *, policy_file: str | None, directory: Path, options: dict[str, Any], forbid: tuple[str, ...]
) -> Policy:
    """The policy file (or pyproject.toml's section), with the rule options on top."""
    base = (
        load_policy_file(policy_file) if policy_file is not None else load_pyproject(directory)
    ) or Policy()
    given: list[Rule] = []
    for name in _NUMBER_OPTIONS:
        value = options.get(name)
        if value is not None:
            flag = "--" + name.replace("_", "-")
            given.append(Rule(name, parse_value(name, value, where=flag)))
    if forbid:
        given.append(Rule("forbid", parse_value("forbid", list(forbid), where="--forbid")))
    policy = base.merged_with(Policy(tuple(given)))
    if not policy.rules:
        raise PolicyError(
            "no rules to check: give rule options (e.g. --max-stuck 0) or a policy "
            "(--policy FILE, or [tool.fintrace.check] in ./pyproject.toml)"
        )
    return policy


# -- output -----------------------------------------------------------------------


def evidence_text(r: RuleResult) -> str | None:
    f = r.wireshark_filter
    if f is None:
        return None
    more = f" (first {len(r.streams)} of {r.total})" if r.total > len(r.streams) else ""
    return f"streams{more}: {f}"


def text_lines(results: list[RuleResult]) -> Iterable[str]:
    sources = list(dict.fromkeys(r.rule.source for r in results))
    yield f"fintrace check: rules from {', '.join(sources)}"
    for r in results:
        yield f"{'PASS' if r.passed else 'FAIL'} {r.rule.id} {r.capture}: {r.message}"
        ev = evidence_text(r)
        if ev is not None and not r.passed:
            yield f"     {ev}"
    bad = failed(results)
    rules = len({r.rule.id for r in results})
    caps = len({r.capture for r in results})
    summary = f"({rules} rule{'s' * (rules != 1)} × {caps} capture{'s' * (caps != 1)})"
    if bad:
        yield f"fintrace check: {len(bad)} of {len(results)} checks failed {summary}"
    else:
        yield f"fintrace check: all {len(results)} checks passed {summary}"


def _gh_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(s: str) -> str:
    return _gh_data(s).replace(":", "%3A").replace(",", "%2C")


def github_lines(results: list[RuleResult]) -> Iterable[str]:
    """GitHub Actions workflow commands: ``::error`` per failure, ``::notice`` per pass."""
    for r in results:
        title = _gh_property(f"fintrace check {r.rule.id}")
        body = f"{r.capture}: {r.message}"
        ev = evidence_text(r)
        if ev is not None and not r.passed:
            body += "\n" + ev
        level = "notice" if r.passed else "error"
        yield f"::{level} title={title}::{_gh_data(body)}"


def junit_tree(results: list[RuleResult]) -> ET.Element:
    """JUnit XML: a test suite per capture, a test case per rule."""
    root = ET.Element(
        "testsuites",
        name="fintrace check",
        tests=str(len(results)),
        failures=str(len(failed(results))),
        errors="0",
    )
    suites: dict[str, ET.Element] = {}
    for r in results:
        suite = suites.get(r.capture)
        if suite is None:
            suite = suites[r.capture] = ET.SubElement(
                root, "testsuite", name=r.capture, tests="0", failures="0", errors="0",
                skipped="0",
            )  # fmt: skip
        suite.set("tests", str(int(suite.get("tests", "0")) + 1))
        case = ET.SubElement(suite, "testcase", classname=r.capture, name=r.rule.id, time="0")
        detail = r.message
        ev = evidence_text(r)
        if ev is not None:
            detail += "\n" + ev
        if r.passed:
            ET.SubElement(case, "system-out").text = detail
        else:
            suite.set("failures", str(int(suite.get("failures", "0")) + 1))
            fail = ET.SubElement(case, "failure", message=r.message, type=r.rule.name)
            fail.text = detail
    ET.indent(root)
    return root


def write_junit(path: str, results: list[RuleResult]) -> None:
    try:
        ET.ElementTree(junit_tree(results)).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise FintraceError(f"{path}: cannot write JUnit report ({exc.strerror})") from None


# -- the command --------------------------------------------------------------------


def _rule_options(f: Any) -> Any:
    opts = [
        click.option(
            "--policy",
            "policy_file",
            # load_policy_file refuses a directory or an unreadable file in one line.
            type=click.Path(dir_okay=True, readable=False),
            default=None,
            help="TOML policy file (rules at its top or under [tool.fintrace.check]); "
            "without it, ./pyproject.toml's [tool.fintrace.check] is used.",
        ),
        click.option(
            "--max-close-wait",
            type=int,
            metavar="N",
            help="At most N connections left in CLOSE_WAIT.",
        ),
        click.option(
            "--max-stuck", type=int, metavar="N", help="At most N stuck CLOSE_WAIT connections."
        ),
        click.option(
            "--max-reset-ratio",
            type=float,
            metavar="RATIO",
            help="At most this share (0–1) of connections closed by reset.",
        ),
        click.option(
            "--forbid",
            multiple=True,
            type=click.Choice([c.value for c in CloseType]),
            help="No connection may close this way (repeatable).",
        ),
        click.option(
            "--max-time-wait-peak",
            type=int,
            metavar="N",
            help="At most N TIME_WAIT held at once by one host.",
        ),
        click.option(
            "--max-port-exhaustion",
            type=float,
            metavar="RATIO",
            help="At most this share (0–1) of the ephemeral ports of one client ip → "
            "server ip:port in TIME_WAIT at once.",
        ),
        click.option(
            "--max-close-wait-s",
            type=float,
            metavar="SECONDS",
            help="No passive side slower than this to close (close_wait_s).",
        ),
        click.option(
            "--junit",
            type=output_path(dash=False),
            default=None,
            help="Also write the verdicts as JUnit XML here.",
        ),
        click.option(
            "--github", is_flag=True, help="Also print GitHub Actions annotations (::error)."
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.command("check")
@analysis_options
@_rule_options
def command(
    *,
    policy_file: str | None,
    forbid: tuple[str, ...],
    junit: str | None,
    github: bool,
    **params: Any,
) -> None:
    """Check CAPTURES against rules: exit 0 if all hold, 1 if one fails, 2 on bad input.

    The connection filters (--close-type, --stuck, --port, --host, --stream)
    select the connections the rules are evaluated on.
    """
    debug = bool(params.get("debug"))
    code = ExitCode.OK
    with _errors(debug):
        policy = build_policy(
            policy_file=policy_file, directory=Path.cwd(), options=params, forbid=forbid
        )
        options, keep = from_params(params)
        checker = Checker(policy, msl=options.msl, ephemeral_ports=options.ephemeral_ports)
        quiet = bool(params.get("quiet"))
        run = run_analysis(options, checker, keep, progress=not quiet and sys.stderr.isatty())
        results = checker.results()
        if junit is not None:
            write_junit(junit, results)
        for line in text_lines(results):
            click.echo(line)
        if github:
            for line in github_lines(results):
                click.echo(line)
        warn(run)
        if failed(results):
            code = ExitCode.CHECK_FAILED
    sys.exit(code)
