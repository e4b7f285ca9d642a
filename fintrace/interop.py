"""Fields that let fintrace's output be joined with other tools' logs.

* :func:`community_id`: the Community ID v1 flow hash
  (https://github.com/corelight/community-id-spec), as Zeek, Suricata and
  Arkime log it.
* :func:`zeek_conn_state`: the ``conn_state`` Zeek's ``conn.log`` would give
  the connection.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import TYPE_CHECKING

from fintrace.decode import FIN, RST

if TYPE_CHECKING:
    from fintrace.tracker import Tracker

PROTO_TCP = 6


def community_id(
    src: bytes, dst: bytes, sport: int, dport: int, *, proto: int = PROTO_TCP, seed: int = 0
) -> str:
    """Community ID v1 of a flow given by raw address bytes and ports."""
    if (src, sport) > (dst, dport):
        src, dst, sport, dport = dst, src, dport, sport
    data = struct.pack("!H", seed) + src + dst + struct.pack("!BBHH", proto, 0, sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def zeek_conn_state(conn: Tracker) -> str:
    """Zeek's ``conn_state`` for the connection.

    Zeek's originator is the sender of the first packet (``conn.a``), with
    its flip rules for a first packet that is a SYN+ACK.
    """
    orig, resp = conn.a, conn.b
    if orig.synack_frame and not orig.syn_frame and not resp.syn_frame:
        orig, resp = resp, orig
    o, r = orig.flags_seen, resp.flags_seen
    o_syn = bool(orig.syn_frame)
    r_synack = bool(resp.synack_frame)
    if r & RST:
        if o_syn and not r_synack and not (o & (FIN | RST)) and orig.bytes == 0:
            return "REJ"
        if not orig.packets:
            return "RSTRH"
        return "RSTR"
    if o & RST:
        if not resp.packets or (not r_synack and o_syn):
            return "RSTOS0" if o_syn else "RSTO"
        return "RSTO"
    if o_syn and not resp.packets:
        return "SH" if o & FIN else "S0"
    if not o_syn and not r_synack:
        if o & FIN and not resp.packets:
            return "SH" if o_syn else "OTH"
        return "OTH"
    if o & FIN and r & FIN:
        return "SF"
    if o & FIN:
        return "S2"
    if r & FIN:
        return "S3"
    return "S1"
