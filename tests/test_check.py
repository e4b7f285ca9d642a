"""fintrace check: policies, every rule holding and failing, exit codes, JUnit, annotations.

Expected figures come from how the captures are built: make_demo.py's six
connections (stream 2 refused, 3 reset by the client, 4 left in CLOSE_WAIT
for 90 s by 10.0.0.11:5432, 0 a graceful close whose server waited 50 ms),
and the TIME_WAIT capture below.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from fintrace.check import Checker, RuleResult
from fintrace.cli import main
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.policy import (
    Policy,
    PolicyError,
    Rule,
    Scope,
    load_policy_file,
    load_pyproject,
    parse_table,
)

from conftest import CAPTURES, need

if TYPE_CHECKING:
    from pathlib import Path

DEMO = str(CAPTURES / "demo.pcap")


def run_check(policy: Policy, *paths: str, **options: Any) -> list[RuleResult]:
    opts = AnalyzeOptions(paths=paths, **options)
    checker = Checker(policy, msl=opts.msl, ephemeral_ports=opts.ephemeral_ports)
    run = analyze(opts)
    for conn in run.connections():
        checker.add(conn)
    checker.end(run)
    return checker.results()


def one(name: str, limit: Any, scope: Scope | None = None, **options: Any) -> RuleResult:
    (result,) = run_check(Policy((Rule(name, limit, scope),)), DEMO, **options)
    return result


@pytest.fixture(scope="module")
def time_wait_capture(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three clients' closes from 10.0.0.1 to 10.0.0.2:80, one second apart.

    Each client closes first and so holds TIME_WAIT from its final ACK on:
    with 2×MSL = 60 s all three overlap (peak 3); with MSL 0.4 s none do.
    """
    from craft import T0, Flow, merge, write_pcap

    flows = []
    for i in range(3):
        f = Flow(client=("10.0.0.1", 40001 + i), server=("10.0.0.2", 80), t=T0 + i)
        f.c("S")
        f.s("SA")
        f.c("A")
        f.c("FA")
        f.s("FA")
        f.c("A")
        flows.append(f.packets)
    path = tmp_path_factory.mktemp("tw") / "time_wait_three.pcap"
    write_pcap(str(path), merge(*flows))
    return str(path)


# -- each rule, holding and failing --------------------------------------------------


def test_max_close_wait() -> None:
    assert one("max_close_wait", 1).passed
    r = one("max_close_wait", 0)
    assert not r.passed and r.observed == 1 and r.streams == (4,)


def test_max_stuck() -> None:
    assert one("max_stuck", 1).passed
    r = one("max_stuck", 0)
    assert not r.passed and r.streams == (4,)
    # Not stuck when the threshold is longer than the 90 s idle time.
    assert one("max_stuck", 0, stuck_after=120.0).passed


def test_max_reset_ratio() -> None:
    # 1 reset (stream 3) of 6 connections.
    ok = one("max_reset_ratio", 0.2)
    assert ok.passed and ok.observed == pytest.approx(1 / 6)
    bad = one("max_reset_ratio", 0.1)
    assert not bad.passed and bad.streams == (3,)


def test_forbid() -> None:
    assert one("forbid", frozenset({"simultaneous", "half_close"})).passed
    r = one("forbid", frozenset({"refused", "reset"}))
    assert not r.passed and r.observed == 2 and sorted(r.streams) == [2, 3]
    assert "refused 1" in r.message and "reset 1" in r.message


def test_max_close_wait_s() -> None:
    assert one("max_close_wait_s", 100.0).passed
    r = one("max_close_wait_s", 10.0)
    assert not r.passed and r.observed == pytest.approx(90.0, abs=0.01) and r.streams == (4,)
    assert "10.0.0.11:5432" in r.message


def test_max_time_wait_peak(time_wait_capture: str) -> None:
    def peak(limit: int, **options: Any) -> RuleResult:
        policy = Policy((Rule("max_time_wait_peak", limit),))
        (r,) = run_check(policy, time_wait_capture, **options)
        return r

    assert peak(3).passed
    r = peak(2)
    assert not r.passed and r.observed == 3 and sorted(r.streams) == [0, 1, 2]
    assert "10.0.0.1" in r.message
    assert peak(1, msl=0.4).passed  # 0.8 s of TIME_WAIT, closes 1 s apart


def test_max_port_exhaustion(time_wait_capture: str) -> None:
    def share(limit: float) -> RuleResult:
        policy = Policy((Rule("max_port_exhaustion", limit),))
        (r,) = run_check(policy, time_wait_capture, ephemeral_ports=10)
        return r

    # 3 of 10 ephemeral ports of 10.0.0.1 → 10.0.0.2:80 held at once.
    assert share(0.3).passed
    r = share(0.25)
    assert not r.passed and r.observed == pytest.approx(0.3) and sorted(r.streams) == [0, 1, 2]


def test_time_wait_figures_agree_with_the_summary(time_wait_capture: str) -> None:
    policy = Policy((Rule("max_time_wait_peak", 100), Rule("max_port_exhaustion", 1.0)))
    peak, share = run_check(policy, time_wait_capture)
    run = analyze(AnalyzeOptions(paths=(time_wait_capture,)))
    list(run.connections())
    tw = run.summary()["time_wait"]
    assert peak.observed == max(h["peak"] for h in tw["by_host"])
    assert share.observed == pytest.approx(max(t["share_of_ephemeral"] for t in tw["by_tuple"]))


# -- scopes --------------------------------------------------------------------------


def test_scoped_rules_see_only_their_service() -> None:
    import ipaddress

    db = Scope(ipaddress.ip_network("10.0.0.11/32"), 5432)
    web = Scope(ipaddress.ip_network("10.0.0.10/32"), 80)
    assert not one("max_stuck", 0, db).passed
    assert one("max_stuck", 0, web).passed
    # The web server's closes took 50 ms at most; the database's 90 s.
    assert one("max_close_wait_s", 1.0, web).passed
    assert not one("max_close_wait_s", 1.0, Scope(None, 5432)).passed
    # A network scope: every demo client is in 10.0.0.0/29; the refused one is 10.0.0.3.
    assert not one(
        "forbid", frozenset({"refused"}), Scope(ipaddress.ip_network("10.0.0.0/29"))
    ).passed
    assert one("forbid", frozenset({"refused"}), Scope(ipaddress.ip_network("10.0.0.4/32"))).passed


def test_a_scope_matching_nothing_says_so() -> None:
    r = one("max_stuck", 0, Scope(None, 9999))
    assert r.passed and "no connection matches *:9999" in r.message


# -- policies ------------------------------------------------------------------------

GOOD = """
[tool.fintrace.check]
max_reset_ratio = 0.05
forbid = ["refused"]

[[tool.fintrace.check.services]]
host = "10.0.0.11"
port = 5432
max_stuck = 0
max_close_wait_s = 2.0
"""


def test_policy_file_with_a_tool_section(tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_text(GOOD)
    policy = load_policy_file(p)
    assert [r.id for r in policy.rules] == [
        "max_reset_ratio",
        "forbid",
        "max_stuck[10.0.0.11:5432]",
        "max_close_wait_s[10.0.0.11:5432]",
    ]
    assert policy.rules[1].limit == frozenset({"refused"})
    assert all(r.source == "policy.toml" for r in policy.rules)


def test_policy_file_with_rules_at_the_top(tmp_path: Path) -> None:
    p = tmp_path / "gate.toml"
    p.write_text('max_stuck = 0\n[[services]]\nport = 443\nforbid = "reset"\n')
    policy = load_policy_file(p)
    assert [(r.id, r.limit) for r in policy.rules] == [
        ("max_stuck", 0),
        ("forbid[*:443]", frozenset({"reset"})),
    ]


def test_pyproject_in_the_directory(tmp_path: Path) -> None:
    assert load_pyproject(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_pyproject(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text(GOOD)
    policy = load_pyproject(tmp_path)
    assert policy is not None and len(policy.rules) == 4


def test_options_override_the_same_rule_of_the_policy() -> None:
    base = Policy((Rule("max_stuck", 5, source="p.toml"), Rule("max_close_wait", 1)))
    merged = base.merged_with(Policy((Rule("max_stuck", 0),)))
    assert [(r.id, r.limit) for r in merged.rules] == [("max_close_wait", 1), ("max_stuck", 0)]


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"max_stuk": 0}, "unknown rule 'max_stuk'; allowed: forbid, max_close_wait,"),
        ({"max_stuck": -1}, "max_stuck must be a whole number ≥ 0, not -1"),
        ({"max_stuck": 1.5}, "max_stuck must be a whole number ≥ 0"),
        ({"max_stuck": True}, "max_stuck must be a whole number ≥ 0, not True"),
        ({"max_reset_ratio": 1.5}, "max_reset_ratio must be a number from 0 to 1, not 1.5"),
        ({"max_reset_ratio": "5%"}, "max_reset_ratio must be a number from 0 to 1"),
        ({"max_close_wait_s": -2}, "max_close_wait_s must be a number of seconds ≥ 0"),
        ({"forbid": ["refused", "rude"]}, "unknown close type 'rude'; allowed: refused, reset,"),
        ({"forbid": 3}, "forbid must be a list of close types (refused, reset,"),
        ({"services": {"port": 1}}, "services must be an array of tables"),
        ({"services": [{"max_stuck": 0}]}, "services[0]: a service needs a host, a port or both"),
        ({"services": [{"port": 80}]}, "services[0]: a service needs at least one rule"),
        ({"services": [{"port": 70000, "max_stuck": 0}]}, "port must be a whole number from 0"),
        ({"services": [{"host": "db", "max_stuck": 0}]}, "host must be an IP address or network"),
        (
            {"services": [{"port": 80, "max_stuck": 0, "colour": 1}]},
            "unknown key 'colour'; allowed: host, port, forbid,",
        ),
        (
            {"services": [{"port": 80, "max_stuck": 0}, {"port": 80, "max_stuck": 1}]},
            "rule max_stuck[*:80] is given twice",
        ),
    ],
)
def test_bad_policies_say_what_is_allowed(table: dict[str, Any], says: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_table(table, source="t.toml", where="t.toml")
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_policy_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("max_stuck = = 0\n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy_file(bad)


# -- the command: exit codes and outputs ----------------------------------------------


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["check", "-q", *args])


def test_exit_0_when_every_rule_holds() -> None:
    r = cli("--max-stuck", "1", "--forbid", "simultaneous", DEMO)
    assert r.exit_code == 0, r.output
    assert "fintrace check: all 2 checks passed" in r.output


def test_exit_1_when_a_rule_fails() -> None:
    r = cli("--max-stuck", "0", "--max-close-wait", "1", DEMO)
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert f"FAIL max_stuck {DEMO}: 1 stuck CLOSE_WAIT connection (limit 0)" in lines
    assert "     streams: tcp.stream eq 4" in lines
    assert any(line.startswith("PASS max_close_wait ") for line in lines)
    assert lines[-1].startswith("fintrace check: 1 of 2 checks failed")


def test_filters_select_the_connections_checked() -> None:
    # Only port 80: the stuck database connection is not looked at.
    assert cli("--max-stuck", "0", "--port", "80", DEMO).exit_code == 0
    assert cli("--max-stuck", "0", "--port", "5432", DEMO).exit_code == 1


def test_policy_option_and_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(GOOD)
    r = cli(DEMO)
    assert r.exit_code == 1, r.output  # refused forbidden, the database stuck
    assert "FAIL forbid " in r.output and "FAIL max_stuck[10.0.0.11:5432] " in r.output
    assert r.output.splitlines()[0] == "fintrace check: rules from pyproject.toml"
    lenient = tmp_path / "lenient.toml"
    lenient.write_text("max_stuck = 1\n")
    r = cli("--policy", str(lenient), DEMO)  # replaces pyproject.toml
    assert r.exit_code == 0, r.output
    assert "forbid" not in r.output
    r = cli("--policy", str(lenient), "--max-stuck", "0", DEMO)  # options win
    assert r.exit_code == 1, r.output
    assert r.output.splitlines()[0] == "fintrace check: rules from options"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([DEMO], "no rules to check"),
        (["--max-reset-ratio", "2", DEMO], "--max-reset-ratio: max_reset_ratio must be a number"),
        (["--max-stuck", "-1", DEMO], "--max-stuck: max_stuck must be a whole number ≥ 0"),
        (["--max-stuck", "0", "no/such.pcap"], "no/such.pcap"),
        (["--policy", "no/such.toml", DEMO], "no/such.toml: no such policy file"),
        (["--policy", ".", DEMO], ".: cannot read policy (Is a directory)"),
    ],
)
def test_exit_2_on_bad_usage_or_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], says: str
) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("fintrace: error: ") and says in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_exit_2_for_an_unknown_rule_in_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.fintrace.check]\nmax_fins = 3\n")
    r = cli(DEMO)
    assert r.exit_code == 2
    assert "unknown rule 'max_fins'; allowed: forbid," in r.output


def test_click_usage_errors_are_exit_2() -> None:
    assert cli("--forbid", "rude", DEMO).exit_code == 2
    assert cli("--max-stuck", "many", DEMO).exit_code == 2
    assert cli().exit_code == 2  # no capture


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("--debug", DEMO)
    assert isinstance(r.exception, PolicyError)


def test_junit_file(tmp_path: Path) -> None:
    out = tmp_path / "fintrace.xml"
    other = str(CAPTURES / "zeek" / "sf_graceful.pcap")
    r = cli("--separate", "--max-stuck", "0", "--forbid", "refused", "--junit", str(out), DEMO,
            other)  # fmt: skip
    assert r.exit_code == 1
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures")) == ("4", "2")
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert set(cases) == {(DEMO, "max_stuck"), (DEMO, "forbid"), (other, "max_stuck"),
                          (other, "forbid")}  # fmt: skip
    failure = cases[(DEMO, "max_stuck")].find("failure")
    assert failure is not None and failure.get("type") == "max_stuck"
    assert "tcp.stream eq 4" in (failure.text or "")
    assert cases[(other, "forbid")].find("failure") is None
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert suites[DEMO].get("failures") == "2" and suites[other].get("failures") == "0"


def test_junit_unwritable_is_exit_2(tmp_path: Path) -> None:
    r = cli("--max-stuck", "0", "--junit", str(tmp_path / "no" / "dir" / "x.xml"), DEMO)
    assert r.exit_code == 2 and "cannot write JUnit report" in r.output


# GitHub's workflow command syntax: ::level key=value,key=value::message, with
# %, CR, LF escaped in the message and also : and , in property values.
ANNOTATION = re.compile(r"^::(error|warning|notice)( title=(?:[^:,%\r\n]|%25|%0D|%0A|%3A|%2C)*)?::"
                        r"(?:[^%\r\n]|%25|%0D|%0A)*$")  # fmt: skip


def test_github_annotations() -> None:
    r = cli("--github", "--max-stuck", "0", "--max-reset-ratio", "0.5", DEMO)
    assert r.exit_code == 1
    notes = [line for line in r.output.splitlines() if line.startswith("::")]
    assert len(notes) == 2
    assert all(ANNOTATION.match(n) for n in notes), notes
    error = next(n for n in notes if n.startswith("::error"))
    assert error.startswith("::error title=fintrace check max_stuck::")
    assert "%0Astreams: tcp.stream eq 4" in error
    notice = next(n for n in notes if n.startswith("::notice"))
    assert "reset ratio 16.7%25" in notice


def _tshark_frames(capture: str, display_filter: str | None = None) -> dict[int, int]:
    """frame.number → tcp.stream of the TCP frames tshark shows (through the filter)."""
    args = ["tshark", "-n", "-r", capture, "-T", "fields", "-e", "frame.number", "-e", "tcp.stream"]
    if display_filter is not None:
        args += ["-Y", display_filter]
    out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    # tshark exits 0 even when it rejects a display filter: its message is on stderr.
    assert out.returncode == 0 and "unexpected" not in out.stderr, out.stderr
    frames = {}
    for line in out.stdout.splitlines():
        frame, _, stream = line.partition("\t")
        if stream:
            frames[int(frame)] = int(stream)
    return frames


def test_evidence_filter_of_several_streams_selects_them_in_tshark() -> None:
    need("tshark")
    from tshark_oracle import tshark_numbering

    r = cli("--numbering", tshark_numbering(), "--forbid", "graceful", "--forbid", "reset",
            "--forbid", "close_wait", DEMO)  # fmt: skip
    assert r.exit_code == 1, r.output
    (evidence,) = [line for line in r.output.splitlines() if line.startswith("     streams: ")]
    display_filter = evidence.removeprefix("     streams: ")
    every = _tshark_frames(DEMO)
    expected = {frame: s for frame, s in every.items() if s in (0, 3, 4)}
    # Stream 5 (frames 33 and 34) lies inside stream 4: exactly those streams' frames.
    assert set(expected.values()) == {0, 3, 4} and 33 not in expected
    assert _tshark_frames(DEMO, display_filter) == expected
    assert display_filter == "tcp.stream in {0, 3, 4}"


def test_github_property_escaping() -> None:
    import ipaddress

    from fintrace.commands.check import github_lines

    rule = Rule("max_stuck", 0, Scope(ipaddress.ip_network("10.0.0.11/32"), 5432))
    result = RuleResult(rule, "a,b.pcap", False, 1, "50% done\nnext", (4,), 1)
    (line,) = github_lines([result])
    assert line.startswith("::error title=fintrace check max_stuck[10.0.0.11%3A5432]::")
    assert "a,b.pcap: 50%25 done%0Anext%0Astreams: tcp.stream eq 4" in line
    assert ANNOTATION.match(line)


def test_the_policies_in_docs_ci_md_are_valid() -> None:
    import tomllib

    from fintrace.policy import _section

    from conftest import ROOT

    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 2
    for block in blocks:
        doc = tomllib.loads(block)
        table = _section(doc) or doc
        assert parse_table(table, source="ci.md", where="ci.md").rules


def test_exit_codes_are_the_documented_table() -> None:
    from fintrace.model import ExitCode

    from conftest import ROOT

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)}
    assert documented == {int(c) for c in ExitCode} == {0, 1, 2, 130}


def test_exit_130_when_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(self: Checker, conn: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Checker, "add", interrupt)
    r = cli("--max-stuck", "0", DEMO)
    assert r.exit_code == 130
    assert r.output.strip() == "fintrace: interrupted"
