"""The MQTT contract between a board and the central receiver: topic names and the ack.

Topics are `teiten/v1/<sensor_id>/<kind>`: the board writes `summary` (an envelope,
docs/wire-format.md), `status` and `health`; the receiver alone writes `ack`, which the
board reads.  The broker's ACL (central/mosquitto/acl) grants exactly these by the client
certificate's name.  An acknowledgement is msgpack `{"seq": int, "status": str, "reason":
str | None}`; a board treats anything else as noise and ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgpack

TOPIC_PREFIX: Final = "teiten/v1"
KINDS: Final = ("summary", "status", "health", "ack")
ACK_STATUSES: Final = ("stored", "duplicate", "rejected")


def topic(sensor_id: str, kind: str) -> str:
    """`teiten/v1/<sensor_id>/<kind>` for kind in summary, status, health, ack."""
    return f"{TOPIC_PREFIX}/{sensor_id}/{kind}"


@dataclass(frozen=True, slots=True)
class Ack:
    """What the receiver says of one envelope: stored, duplicate, or rejected (reason)."""

    sequence: int
    status: str
    reason: str | None


def ack_payload(sequence: int, status: str, reason: str | None) -> bytes:
    """The receiver's acknowledgement: msgpack `{"seq", "status", "reason"}`."""
    out: bytes = msgpack.packb({"seq": sequence, "status": status, "reason": reason})
    return out


def parse_ack(data: bytes) -> Ack | None:
    """Decode an acknowledgement; None for anything malformed (it is then ignored)."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:
        return None
    if not isinstance(obj, dict):
        return None
    seq, status, reason = obj.get("seq"), obj.get("status"), obj.get("reason")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return None
    if status not in ACK_STATUSES:
        return None
    if reason is not None and not isinstance(reason, str):
        return None
    return Ack(seq, status, reason)
