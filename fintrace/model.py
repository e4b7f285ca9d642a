"""The names fintrace uses and the records that cross module boundaries.

Every enumeration here is a public value of the JSON contract
(``../shared/TEARDOWN.md``); ``docs/taxonomy.md`` documents each member and a
test checks both lists against each other.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any, ClassVar, Final, TypeVar

from mypy_extensions import mypyc_attr


class State(StrEnum):
    """RFC 9293 connection states of one side, plus RESET."""

    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"
    CLOSED = "CLOSED"
    RESET = "RESET"


class CloseType(StrEnum):
    """How a connection ended; the first matching rule of TEARDOWN.md wins."""

    REFUSED = "refused"
    RESET = "reset"
    SIMULTANEOUS = "simultaneous"
    HALF_CLOSE = "half_close"
    PIGGYBACKED = "piggybacked"
    GRACEFUL = "graceful"
    CLOSE_WAIT = "close_wait"
    UNACKED_FIN = "unacked_fin"
    OPEN = "open"
    ATTEMPT = "attempt"


class ResetPhase(StrEnum):
    """When the ending RST came.

    ``handshake`` is fintrace's addition to the contract's three values: a
    RST during the handshake that is not the server answering the SYN (a
    half-open scan's RST, a client giving up after the SYN+ACK).
    """

    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSING = "closing"
    CLOSED = "closed"


class Role(StrEnum):
    CLIENT = "client"
    SERVER = "server"
    BOTH = "both"


class SkipReason(StrEnum):
    """Why a packet did not become a TCP segment; counted, never silent."""

    NOT_IP = "not_ip"
    NOT_TCP = "not_tcp"
    UNSUPPORTED_LINKTYPE = "unsupported_linktype"
    TRUNCATED_LINK = "truncated_link_header"
    TRUNCATED_IP = "truncated_ip_header"
    BAD_IP_HEADER = "bad_ip_header"
    TRUNCATED_TCP = "truncated_tcp_header"
    BAD_TCP_HEADER = "bad_tcp_header"
    IP_FRAGMENT = "ip_fragment"
    UNREASSEMBLED_FRAGMENT = "unreassembled_fragment"
    BAD_FRAGMENT = "bad_fragment"
    IPV6_EXTENSION_CHAIN = "ipv6_extension_chain"
    TUNNEL = "tunnelled"
    NOT_A_PACKET = "not_a_packet"


#: Skip reasons that are not losses: the packet's bytes were used elsewhere.
#: A fragment whose datagram was reassembled is decoded in the frame that
#: completes it, exactly as Wireshark shows it. A pcapng record that Wireshark
#: numbers as a frame but that holds no packet (a systemd journal entry, a
#: custom block) loses nothing either.
NOT_A_LOSS: Final = frozenset({SkipReason.IP_FRAGMENT, SkipReason.NOT_A_PACKET})


class Anomaly(StrEnum):
    """Protocol oddities the tracker notes on a connection."""

    NO_HANDSHAKE = "no_handshake"
    ONE_SIDED = "one_sided"
    DATA_AFTER_FIN = "data_after_fin"
    SYN_FIN = "syn_fin"
    FIN_RST = "fin_rst"
    RST_WITH_DATA = "rst_with_data"
    RST_OUT_OF_WINDOW = "rst_out_of_window"
    FIN_OUT_OF_WINDOW = "fin_out_of_window"
    FIN_WITHOUT_ACK = "fin_without_ack"
    ACKED_UNSEEN_FIN = "acked_unseen_fin"
    RST_NOT_ACKING_SYN = "rst_not_acking_syn"
    SEGMENT_AFTER_RST = "segment_after_rst"
    FIN_SEQ_CHANGED = "fin_seq_changed"
    SIMULTANEOUS_OPEN = "simultaneous_open"
    ICMP_ERROR = "icmp_error"
    BAD_TCP_HEADER = "bad_tcp_header"
    TRUNCATED_TCP_HEADER = "truncated_tcp_header"


class ExitCode(IntEnum):
    """The exit statuses of every command; the CI contract (docs/cli.md)."""

    OK = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    INTERRUPTED = 130


# The per-connection records. Plain classes with their own __init__ rather
# than named tuples or dataclasses: compiled, one is made by a direct C call
# in about 50 ns, where a named tuple's Python __new__ (or tuple.__new__) and a
# dataclass's generated __init__ go through the interpreter and make
# temporary tuples (190 ns and more); a connection makes about fifteen, a
# large capture a hundred thousand connections (docs/performance.md). They
# hold only values, tuples of values and other records, so they are
# *acyclic*: outside the cycle collector. Treat them as immutable; :class:`Record` gives them
# equality, a hash, a repr and pickling by their field values.


R = TypeVar("R", bound="Record")


@mypyc_attr(acyclic=True)
class Record:
    """Equality, hash, repr and pickling of a record, from its :attr:`FIELDS`."""

    #: The record's fields, in order (the JSON contract's names).
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def values(self) -> tuple[Any, ...]:
        """The field values, in the order of :attr:`FIELDS` (and of ``__init__``)."""
        return tuple([getattr(self, name) for name in self.FIELDS])

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self) or not isinstance(other, Record):
            return False
        return self.values() == other.values()

    def __hash__(self) -> int:
        return hash(self.values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(self.FIELDS, self.values(), strict=True))
        return f"{type(self).__name__}({shown})"

    def __reduce__(self) -> tuple[type[Record], tuple[Any, ...]]:
        return (type(self), self.values())

    def replace(self: R, **changes: Any) -> R:
        """A copy with some fields changed (a named tuple's ``_replace``)."""
        return type(self)(**{**dict(zip(self.FIELDS, self.values(), strict=True)), **changes})


@mypyc_attr(acyclic=True)
class Endpoint(Record):
    FIELDS: ClassVar[tuple[str, ...]] = ("ip", "port")

    def __init__(self, ip: str, port: int) -> None:
        self.ip = ip
        self.port = port


@mypyc_attr(acyclic=True)
class Transition(Record):
    FIELDS: ClassVar[tuple[str, ...]] = ("side", "state", "frame", "ts")

    def __init__(self, side: Role, state: State, frame: int, ts: float) -> None:
        self.side = side
        self.state = state
        self.frame = frame
        self.ts = ts


@mypyc_attr(acyclic=True)
class SideCounts(Record):
    FIELDS: ClassVar[tuple[str, ...]] = ("client", "server")

    def __init__(self, client: int, server: int) -> None:
        self.client = client
        self.server = server


@mypyc_attr(acyclic=True)
class SideFrames(Record):
    FIELDS: ClassVar[tuple[str, ...]] = ("client", "server")

    def __init__(self, client: int | None, server: int | None) -> None:
        self.client = client
        self.server = server


@mypyc_attr(acyclic=True)
class SideStates(Record):
    FIELDS: ClassVar[tuple[str, ...]] = ("client", "server")

    def __init__(self, client: State | None, server: State | None) -> None:
        self.client = client
        self.server = server


@mypyc_attr(acyclic=True)
class Reuse(Record):
    FIELDS: ClassVar[tuple[str, ...]] = ("previous_stream", "gap_s")

    def __init__(self, previous_stream: int, gap_s: float) -> None:
        self.previous_stream = previous_stream
        self.gap_s = gap_s


@mypyc_attr(acyclic=True)
class FileSpan(Record):
    """Where a connection's packets lie in one file of a multi-file run.

    ``stream`` is the ``tcp.stream`` Wireshark gives the connection when that
    file is opened on its own.
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "capture",
        "stream",
        "first_frame",
        "last_frame",
        "packets",
    )

    def __init__(
        self,
        capture: str,
        stream: int,
        first_frame: int,
        last_frame: int,
        packets: int,
    ) -> None:
        self.capture = capture
        self.stream = stream
        self.first_frame = first_frame
        self.last_frame = last_frame
        self.packets = packets


@mypyc_attr(acyclic=True)
class Connection(Record):
    """One connection, as the JSON contract names its fields."""

    FIELDS: ClassVar[tuple[str, ...]] = (
        "stream",
        "capture",
        "client",
        "server",
        "roles_inferred",
        "first_frame",
        "last_frame",
        "first_ts",
        "last_ts",
        "packets",
        "payload_bytes",
        "close_type",
        "active_closer",
        "reset_by",
        "reset_phase",
        "time_wait",
        "fin_frames",
        "rst_frame",
        "half_close_bytes",
        "close_wait_s",
        "stuck",
        "final_ack_seen",
        "fin_retransmits",
        "end_state",
        "transitions",
        "reused_tuple",
        "anomalies",
        "community_id",
        "zeek_conn_state",
        "last_capture",
        "files",
        "rst_lost_bytes",
    )

    def __init__(  # noqa: PLR0917 (made positionally, the quickest call, by the pipeline)
        self,
        stream: int,
        capture: str,
        client: Endpoint,
        server: Endpoint,
        roles_inferred: bool,
        first_frame: int,
        last_frame: int,
        first_ts: float,
        last_ts: float,
        packets: int,
        payload_bytes: SideCounts,
        close_type: CloseType,
        active_closer: Role | None,
        reset_by: Role | None,
        reset_phase: ResetPhase | None,
        time_wait: Role | None,
        fin_frames: SideFrames,
        rst_frame: int | None,
        half_close_bytes: int,
        close_wait_s: float | None,
        stuck: bool,
        final_ack_seen: bool | None,
        fin_retransmits: int,
        end_state: SideStates,
        transitions: tuple[Transition, ...],
        reused_tuple: Reuse | None,
        anomalies: tuple[str, ...],
        community_id: str,
        zeek_conn_state: str,
        last_capture: str,
        files: tuple[FileSpan, ...],
        rst_lost_bytes: int,
    ) -> None:
        self.stream = stream
        self.capture = capture
        self.client = client
        self.server = server
        self.roles_inferred = roles_inferred
        self.first_frame = first_frame
        self.last_frame = last_frame
        self.first_ts = first_ts
        self.last_ts = last_ts
        self.packets = packets
        self.payload_bytes = payload_bytes
        self.close_type = close_type
        self.active_closer = active_closer
        self.reset_by = reset_by
        self.reset_phase = reset_phase
        self.time_wait = time_wait
        self.fin_frames = fin_frames
        self.rst_frame = rst_frame
        self.half_close_bytes = half_close_bytes
        self.close_wait_s = close_wait_s
        self.stuck = stuck
        self.final_ack_seen = final_ack_seen
        self.fin_retransmits = fin_retransmits
        self.end_state = end_state
        self.transitions = transitions
        self.reused_tuple = reused_tuple
        self.anomalies = anomalies
        self.community_id = community_id
        self.zeek_conn_state = zeek_conn_state
        self.last_capture = last_capture
        self.files = files
        self.rst_lost_bytes = rst_lost_bytes
