"""The rules ``fintrace check`` enforces: read from TOML, validated, frozen.

A policy is a TOML table of rules, either at the top of a ``--policy`` file
or under ``[tool.fintrace.check]`` (in that file, or in the ``pyproject.toml``
of the working directory). Scoped rules sit in ``[[services]]`` entries of
that table, each with ``host`` (an address or network) and/or ``port``::

    [tool.fintrace.check]
    max_reset_ratio = 0.05
    forbid = ["refused"]

    [[tool.fintrace.check.services]]
    host = "10.0.0.11"
    port = 5432
    max_stuck = 0
    max_close_wait_s = 2.0

Every value is checked before any capture is read; an unknown rule name or a
bad value raises :class:`PolicyError` naming what is allowed.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fintrace.errors import FintraceError
from fintrace.model import CloseType

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: rule name → kind of limit it takes
RULES: dict[str, str] = {
    "forbid": "close_types",
    "max_close_wait": "count",
    "max_close_wait_s": "seconds",
    "max_port_exhaustion": "ratio",
    "max_reset_ratio": "ratio",
    "max_stuck": "count",
    "max_time_wait_peak": "count",
}

_KINDS = {
    "count": "a whole number ≥ 0",
    "ratio": "a number from 0 to 1",
    "seconds": "a number of seconds ≥ 0",
    "close_types": "a list of close types (" + ", ".join(c.value for c in CloseType) + ")",
}

SCOPE_KEYS = ("host", "port")
SERVICES_KEY = "services"


class PolicyError(FintraceError):
    """A policy that cannot be used: exit status 2, one line."""


@dataclass(frozen=True, slots=True)
class Scope:
    """A service: an endpoint address (or network) and/or port.

    A connection is in scope when one of its two endpoints matches both.
    """

    host: Network | None = None
    port: int | None = None

    def matches(self, ip: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.host is None:
            return True
        addr = ipaddress.ip_address(ip)
        return addr.version == self.host.version and addr in self.host

    def __str__(self) -> str:
        if self.host is None:
            return f"*:{self.port}"
        host = str(self.host)
        if self.host.num_addresses == 1:
            host = str(self.host.network_address)
        if self.port is None:
            return host
        return f"[{host}]:{self.port}" if self.host.version == 6 else f"{host}:{self.port}"


Limit = int | float | frozenset[str]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    limit: Limit
    scope: Scope | None = None
    #: where the rule came from: "options", or the policy file's name
    source: str = "options"

    @property
    def id(self) -> str:
        """The rule's name, with its service: ``max_stuck[10.0.0.11:5432]``."""
        return self.name if self.scope is None else f"{self.name}[{self.scope}]"


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()

    def merged_with(self, other: Policy) -> Policy:
        """This policy with ``other``'s rules added; same rule and scope: ``other`` wins."""
        theirs = {r.id for r in other.rules}
        return Policy(tuple(r for r in self.rules if r.id not in theirs) + other.rules)


def parse_value(name: str, value: object, *, where: str) -> Limit:
    """Check one rule's value; ``where`` prefixes the error message."""
    if name not in RULES:
        raise PolicyError(f"{where}: unknown rule {name!r}; allowed: {', '.join(sorted(RULES))}")
    kind = RULES[name]
    bad = PolicyError(f"{where}: {name} must be {_KINDS[kind]}, not {value!r}")
    if kind == "close_types":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        allowed = {c.value for c in CloseType}
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise PolicyError(
                f"{where}: {name}: unknown close type {unknown[0]!r}; "
                f"allowed: {', '.join(c.value for c in CloseType)}"
            )
        return frozenset(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    if kind == "count":
        if not isinstance(value, int) or value < 0:
            raise bad
        return value
    number = float(value)
    if math.isnan(number) or number < 0 or (kind == "ratio" and number > 1):
        raise bad
    return number


def parse_scope(table: dict[str, Any], *, where: str) -> Scope:
    host = table.get("host")
    port = table.get("port")
    net: Network | None = None
    if host is not None:
        if not isinstance(host, str):
            raise PolicyError(f"{where}: host must be an IP address or network, not {host!r}")
        try:
            net = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise PolicyError(
                f"{where}: host must be an IP address or network, not {host!r}"
            ) from None
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        raise PolicyError(f"{where}: port must be a whole number from 0 to 65535, not {port!r}")
    if net is None and port is None:
        raise PolicyError(f"{where}: a service needs a host, a port or both")
    return Scope(net, port)


def parse_table(table: dict[str, Any], *, source: str, where: str) -> Policy:
    """The rules of one policy table (its ``services`` entries included)."""
    rules: list[Rule] = []
    for key, value in table.items():
        if key == SERVICES_KEY:
            continue
        rules.append(Rule(key, parse_value(key, value, where=where), None, source))
    services = table.get(SERVICES_KEY, [])
    if not isinstance(services, list) or not all(isinstance(s, dict) for s in services):
        raise PolicyError(f"{where}: {SERVICES_KEY} must be an array of tables ([[...]])")
    for i, svc in enumerate(services):
        here = f"{where}.{SERVICES_KEY}[{i}]"
        scope = parse_scope(svc, where=here)
        names = [k for k in svc if k not in SCOPE_KEYS]
        if not names:
            raise PolicyError(f"{here}: a service needs at least one rule")
        for key in names:
            value = svc[key]
            if key not in RULES:
                allowed = ", ".join([*SCOPE_KEYS, *sorted(RULES)])
                raise PolicyError(f"{here}: unknown key {key!r}; allowed: {allowed}")
            rules.append(Rule(key, parse_value(key, value, where=here), scope, source))
    ids = [r.id for r in rules]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise PolicyError(f"{where}: rule {dupes[0]} is given twice")
    return Policy(tuple(rules))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such policy file") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML ({exc})") from None


def _section(doc: dict[str, Any]) -> dict[str, Any] | None:
    """``[tool.fintrace.check]`` of a document, or None."""
    node: Any = doc
    for key in ("tool", "fintrace", "check"):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if not isinstance(node, dict):
        raise PolicyError("[tool.fintrace.check] must be a table")
    return node


def load_policy_file(path: str | Path) -> Policy:
    """A ``--policy`` file: rules at its top, or under ``[tool.fintrace.check]``."""
    p = Path(path)
    doc = _read_toml(p)
    section = _section(doc)
    if section is not None:
        return parse_table(section, source=p.name, where=f"{p} [tool.fintrace.check]")
    return parse_table(doc, source=p.name, where=str(p))


def load_pyproject(directory: str | Path) -> Policy | None:
    """``[tool.fintrace.check]`` of ``pyproject.toml`` in ``directory``, if there is one."""
    p = Path(directory) / "pyproject.toml"
    if not p.is_file():
        return None
    section = _section(_read_toml(p))
    if section is None:
        return None
    return parse_table(section, source=p.name, where=f"{p.name} [tool.fintrace.check]")
