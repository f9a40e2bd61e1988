"""
Jumping wire format, version 1.

Every message starts with a 4-byte header: ``type:u8 | version:u8 | reserved:u16 (zero)``.
All integers are little-endian. Nothing on the wire carries the SessionID in clear: data
and control messages name the receiver's 32-bit index, which changes with every handshake.

======================  =====================================================================
type                    layout after the 4-byte header
======================  =====================================================================
1 HANDSHAKE_INIT        sender_index:u32 | noise IK message 1 (128) | mac1:16 | mac2:16
2 HANDSHAKE_RESP        sender_index:u32 | receiver_index:u32 | noise IK message 2 (72)
                        | mac1:16 | mac2:16
3 COOKIE_REPLY          receiver_index:u32 | nonce:24 | sealed cookie:32
4 DATA                  receiver_index:u32 | counter:u64 | AEAD(ip packet) (+16 tag)
5 CONTROL               receiver_index:u32 | counter:u64 | AEAD(subtype:u8 | body) (+16 tag)
6 DATA_SEGMENT          as DATA, with the header's third field ``chunk:u16`` instead of
                        reserved; AEAD(TCP/IPv4 super-packet header | one piece of its
                        payload) (:mod:`jumping.core.segments`)
======================  =====================================================================

DATA_SEGMENT is protocol revision 2: a node sends it only to a peer that announced the
``segments`` feature in a KEEPALIVE body (``revision:u8 | features:u32``; a revision-1 peer
ignores the body and never sees a DATA_SEGMENT, so mixed pairs keep using DATA).

DATA and CONTROL share the keypair's counter space and replay window; the 16-byte header is
the AEAD's associated data and its last 8 bytes (the counter) make the nonce, so a header
cannot be altered either. CONTROL subtypes (encrypted, invisible to an observer) are the
keepalive/heartbeat, probe and probe reply, path challenge and response, reattach and its
acknowledgement, and an explicit termination notice.

The handshake payloads (inside Noise, so encrypted and authenticated) are fixed-size:

- initiation: ``timestamp_ms:u64 | session_id:16 (zeros = new session) | state_version:u64``
- response: ``session_id:16 | state_version:u64``
"""

from __future__ import annotations

import struct
from enum import IntEnum

VERSION = 1


class MessageType(IntEnum):
    HANDSHAKE_INIT = 1
    HANDSHAKE_RESP = 2
    COOKIE_REPLY = 3
    DATA = 4
    CONTROL = 5
    DATA_SEGMENT = 6


class Control(IntEnum):
    KEEPALIVE = 1
    PROBE = 2
    PROBE_REPLY = 3
    CHALLENGE = 4
    RESPONSE = 5
    REATTACH = 6
    REATTACH_ACK = 7
    TERMINATE = 8


HEADER = struct.Struct("<BBH")
#: DATA / CONTROL header: type, version, reserved, receiver index, counter.
TRANSPORT_HEADER = struct.Struct("<BBHIQ")
TRANSPORT_HEADER_LEN = TRANSPORT_HEADER.size  # 16
TAG_LEN = 16
#: bytes a DATA packet adds to the inner packet.
OVERHEAD = TRANSPORT_HEADER_LEN + TAG_LEN

INIT_PAYLOAD = struct.Struct("<Q16sQ")  # timestamp_ms, session_id, state_version
RESP_PAYLOAD = struct.Struct("<16sQ")  # session_id, state_version
NOISE_INIT_LEN = 32 + (32 + 16) + (INIT_PAYLOAD.size + 16)  # e, s, payload = 128
NOISE_RESP_LEN = 32 + (RESP_PAYLOAD.size + 16)  # e, payload = 72
MAC_LEN = 16

INIT = struct.Struct(f"<BBHI{NOISE_INIT_LEN}s")
INIT_LEN = INIT.size + 2 * MAC_LEN  # 168
RESP = struct.Struct(f"<BBHII{NOISE_RESP_LEN}s")
RESP_LEN = RESP.size + 2 * MAC_LEN  # 116
COOKIE = struct.Struct("<BBHI24s32s")
COOKIE_LEN = COOKIE.size  # 64

#: Largest datagram we ever accept or produce.
MAX_DATAGRAM = 65535
#: Counters at or beyond this are never used (a keypair must be replaced before).
COUNTER_LIMIT = 2**64 - 2**13 - 1

DATA_PREFIX = HEADER.pack(MessageType.DATA, VERSION, 0)
CONTROL_PREFIX = HEADER.pack(MessageType.CONTROL, VERSION, 0)


def message_type(data: bytes) -> int | None:
    """The message type of ``data`` if the header is well-formed for version 1, else None
    (the reserved field must be zero except in DATA_SEGMENT, where it is the chunk)."""
    if len(data) < 4 or data[1] != VERSION:
        return None
    t = data[0]
    if t < MessageType.HANDSHAKE_INIT or t > MessageType.DATA_SEGMENT:
        return None
    if (data[2] or data[3]) and t != MessageType.DATA_SEGMENT:
        return None
    return t


def pack_init(sender_index: int, noise_message: bytes) -> bytes:
    """Initiation without its MACs (the caller appends mac1 and mac2)."""
    return INIT.pack(MessageType.HANDSHAKE_INIT, VERSION, 0, sender_index, noise_message)


def pack_resp(sender_index: int, receiver_index: int, noise_message: bytes) -> bytes:
    """Response without its MACs."""
    return RESP.pack(
        MessageType.HANDSHAKE_RESP, VERSION, 0, sender_index, receiver_index, noise_message
    )


def pack_cookie_reply(receiver_index: int, nonce: bytes, sealed: bytes) -> bytes:
    return COOKIE.pack(MessageType.COOKIE_REPLY, VERSION, 0, receiver_index, nonce, sealed)
