"""The names fintrace uses and the records that cross module boundaries.

Every enumeration here is a public value of the JSON contract
(``../shared/TEARDOWN.md``); ``docs/taxonomy.md`` documents each member and a
test checks both lists against each other.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final, NamedTuple


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


# The per-connection records below are NamedTuples rather than frozen slots
# dataclasses: equally immutable and typed, but built about ten times faster
# (a frozen dataclass sets each field through object.__setattr__), and one
# is built per connection, a hundred thousand times on a large capture
# (docs/performance.md).

#: ``record(Connection, (stream, capture, ...))``: a record from the tuple of all
#: its fields, in order. A NamedTuple call runs the class's ``__new__``, Python
#: code even for a compiled caller (2,000 instructions a call); this is
#: ``tuple.__new__``, in C. Nothing counts the fields: the schema and output
#: tests see a record whose fields are off by one.
record: Final = tuple.__new__


class Endpoint(NamedTuple):
    ip: str
    port: int


class Transition(NamedTuple):
    side: Role
    state: State
    frame: int
    ts: float


class SideCounts(NamedTuple):
    client: int
    server: int


class SideFrames(NamedTuple):
    client: int | None
    server: int | None


class SideStates(NamedTuple):
    client: State | None
    server: State | None


class Reuse(NamedTuple):
    previous_stream: int
    gap_s: float


class FileSpan(NamedTuple):
    """Where a connection's packets lie in one file of a multi-file run.

    ``stream`` is the ``tcp.stream`` Wireshark gives the connection when that
    file is opened on its own.
    """

    capture: str
    stream: int
    first_frame: int
    last_frame: int
    packets: int


class Connection(NamedTuple):
    """One connection, as the JSON contract names its fields."""

    stream: int
    capture: str
    client: Endpoint
    server: Endpoint
    roles_inferred: bool
    first_frame: int
    last_frame: int
    first_ts: float
    last_ts: float
    packets: int
    payload_bytes: SideCounts
    close_type: CloseType
    active_closer: Role | None
    reset_by: Role | None
    reset_phase: ResetPhase | None
    time_wait: Role | None
    fin_frames: SideFrames
    rst_frame: int | None
    half_close_bytes: int
    close_wait_s: float | None
    stuck: bool
    final_ack_seen: bool | None
    fin_retransmits: int
    end_state: SideStates
    transitions: tuple[Transition, ...]
    reused_tuple: Reuse | None
    anomalies: tuple[str, ...]
    community_id: str
    zeek_conn_state: str
    last_capture: str
    files: tuple[FileSpan, ...]
    rst_lost_bytes: int
