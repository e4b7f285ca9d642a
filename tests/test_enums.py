"""The enumerations of fintrace/model.py against the contract and the docs.

* ``CloseType``, ``State``, ``ResetPhase`` and ``Role`` hold exactly the values
  ``TEARDOWN.md`` lists (``ResetPhase`` plus ``handshake``, the one documented
  deviation), read from the contract itself;
* every enumeration, ``Anomaly`` and ``SkipReason`` too, is documented exactly
  once in ``docs/``: one table announced by ``<!-- enum: Name -->`` whose
  first column lists each value once, and nothing else.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

import pytest

from fintrace.model import Anomaly, CloseType, ResetPhase, Role, SkipReason, State

from conftest import REQUIRE_ORACLES, ROOT

CONTRACT = ROOT.parent / "shared" / "TEARDOWN.md"
DOCS = ROOT / "docs"
ENUMS: dict[str, type[StrEnum]] = {
    "CloseType": CloseType,
    "State": State,
    "ResetPhase": ResetPhase,
    "Role": Role,
    "Anomaly": Anomaly,
    "SkipReason": SkipReason,
}
#: What fintrace adds to the contract's lists, each explained in docs/taxonomy.md.
ADDED = {"ResetPhase": {"handshake"}}


@pytest.fixture(scope="module")
def contract() -> str:
    if not CONTRACT.is_file():
        if REQUIRE_ORACLES:
            pytest.fail(f"the contract is missing at {CONTRACT}")
        pytest.skip("../shared/TEARDOWN.md is not present")
    return CONTRACT.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"no section {heading!r}"
    return m.group(1)


def close_types(text: str) -> set[str]:
    """The numbered rules of ``## close_type``: ``1. `refused`: …``."""
    return set(re.findall(r"^\d+\.\s+`(\w+)`", section(text, "close_type"), re.M))


def states(text: str) -> set[str]:
    """``fintrace tracks each side through the RFC 9293 states A, B, …, plus RESET``."""
    body = section(text, "Per-side states")
    m = re.search(r"RFC 9293 states(.*?)\bfor a side", body, re.S)
    assert m
    return set(re.findall(r"\b[A-Z][A-Z_0-9]{3,}\b", m.group(1))) - {"RFC"}


def table_row(text: str, field: str) -> str:
    m = re.search(rf"^\| `{re.escape(field)}` \|(.*)$", text, re.M)
    assert m, f"no row for {field!r}"
    return m.group(1)


def reset_phases(text: str) -> set[str]:
    return set(re.findall(r'"(\w+)"', table_row(text, "reset_phase")))


def roles_(text: str) -> set[str]:
    return set(re.findall(r'"(\w+)"', table_row(text, "active_closer")))


def test_the_parsers_read_what_the_contract_says(contract: str) -> None:
    # Known values from the contract's text, so a parser that reads nothing fails.
    assert {"refused", "attempt", "half_close"} <= close_types(contract)
    assert {"SYN_SENT", "TIME_WAIT", "RESET"} <= states(contract)
    assert "established" in reset_phases(contract)
    assert "both" in roles_(contract)


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("CloseType", close_types),
        ("State", states),
        ("ResetPhase", reset_phases),
        ("Role", roles_),
    ],
)
def test_enum_matches_the_contract(name: str, read: object, contract: str) -> None:
    assert callable(read)
    listed = read(contract)
    values = {m.value for m in ENUMS[name]}
    assert values == listed | ADDED.get(name, set())


def test_close_types_in_rule_order(contract: str) -> None:
    body = section(contract, "close_type")
    ordered = re.findall(r"^\d+\.\s+`(\w+)`", body, re.M)
    assert [c.value for c in CloseType] == ordered


def documented(name: str) -> list[tuple[Path, list[str]]]:
    """Each docs table announced for ``name``: the values of its first column."""
    out = []
    marker = f"<!-- enum: {name} -->"
    for path in sorted(DOCS.rglob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() != marker:
                continue
            values = []
            for row in lines[i + 3 :]:  # the header row and its rule come first
                if not row.startswith("|"):
                    break
                m = re.match(r"\|\s*`([^`]+)`\s*\|", row)
                assert m, f"{path.name}: {name} row without a `value` first: {row!r}"
                values.append(m.group(1))
            out.append((path, values))
    return out


@pytest.mark.parametrize("name", list(ENUMS))
def test_enum_documented_once(name: str) -> None:
    tables = documented(name)
    assert len(tables) == 1, f"{name}: {len(tables)} tables in docs/ ({tables})"
    _, values = tables[0]
    assert sorted(values) == sorted({m.value for m in ENUMS[name]})
    assert len(values) == len(set(values)), f"{name}: a value documented twice"
