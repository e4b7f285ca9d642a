"""End to end on the demo capture: the README's first command works."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fintrace.cli import main

from conftest import CAPTURES


def test_demo_capture_jsonl_lists_every_close_type_it_holds() -> None:
    result = CliRunner().invoke(
        main, ["analyze", "--format", "jsonl", "-q", str(CAPTURES / "demo.pcap")]
    )
    assert result.exit_code == 0, result.output
    conns = [json.loads(line) for line in result.output.splitlines()]
    # make_demo.py builds these six connections, in this order of first packet.
    by_stream = {c["stream"]: c["close_type"] for c in conns}
    assert by_stream == {
        0: "graceful",
        1: "piggybacked",
        2: "refused",
        3: "reset",
        4: "close_wait",
        5: "attempt",
    }


def test_missing_file_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(main, ["analyze", "no/such/file.pcap"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == ["fintrace: error: no/such/file.pcap: no such file"]
