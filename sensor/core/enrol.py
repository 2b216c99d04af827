"""The board's enrolment decisions, sans-I/O: what `teiten enrol` does at a boot.

Strategy: `decide` takes what the board knows (its certificate's expiry, whether the card
has a token, the time) and says what to do; `remove_token` and `result_text` are the card's
text before and after.  The I/O (the card, the keys, TLS, MQTT) is `sensor.edges.enrol`,
`uplink.enrol` and `sensor.cli.enrol`; the contract is `wire.enrolment`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

ENROL_TABLE: Final = "enrol"
_TOKEN_LINE: Final = re.compile(r"^\s*token\s*=.*$", re.MULTILINE)


class Action(enum.Enum):
    NOTHING = "already"  # a valid certificate: nothing to do
    TIDY = "tidy"  # a valid certificate and a token still on the card: remove the token
    ENROL = "enrol"  # no valid certificate, a token: enrol with it
    STUCK = "stuck"  # no valid certificate, no token: silent until central sends one


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str | None
    detail: str


def decide(cert_not_after: float | None, now: float, has_token: bool, sensor_id: str
           ) -> Decision:
    """`cert_not_after`: the installed certificate's expiry (Unix s), None without one."""
    valid = cert_not_after is not None and cert_not_after > now
    if valid:
        return Decision(Action.TIDY if has_token else Action.NOTHING, None,
                        "the board has a valid certificate")
    if has_token:
        return Decision(Action.ENROL, None, "enrolling with the token in teiten.toml")
    why = "expired" if cert_not_after is not None else "missing"
    return Decision(Action.STUCK, "no_token", f"the certificate is {why} and teiten.toml has "
                    "no [enrol] token: ask central for one (`teiten central enroll "
                    f"{sensor_id}`{' --replace' if cert_not_after is not None else ''})")


def remove_token(text: str) -> str:
    """teiten.toml without its `token = ...` line(s) in `[enrol]` (the rest unchanged)."""
    out: list[str] = []
    table = ""
    for line in text.splitlines(keepends=True):
        s = line.strip()
        if s.startswith("[") and not s.startswith("[["):
            table = s.split("#", 1)[0].strip().strip("[]").strip()
        if table == ENROL_TABLE and _TOKEN_LINE.match(line):
            out.append("# token used by the board; see teiten-enrolment.txt\n")
            continue
        out.append(line)
    return "".join(out)


_TODO: Final = {
    "token_used": "this token was used already: ask central for a new one "
                  "(`teiten central enroll SENSOR_ID`) and put it in teiten.toml",
    "token_expired": "the token expired: ask central for a new one",
    "token_unknown": "central does not know this token (mistyped, expired and removed, or "
                     "used): check it, or ask for a new one",
    "wrong_sensor": "the token is for another sensor id: check [sensor] id in teiten.toml, "
                    "or ask for a token for this id",
    "not_authorized": "the broker refused the token (used, expired, mistyped or never "
                      "issued): ask central for a new one",
    "rogue_broker": "the broker is not the one teiten.toml pins: check [uplink] host and "
                    "[enrol] ca_fingerprint",
    "unreachable": "check the management network and [uplink] host / [enrol] port; the "
                   "board tries again at the next boot",
    "no_reply": "central's enrolment service did not answer; the board tries again at the "
                "next boot",
    "no_token": "ask central for a token and put its [enrol] block in teiten.toml",
}


def result_text(sensor_id: str, ok: bool, reason: str, detail: str, when: str) -> str:
    """teiten-enrolment.txt: what happened, and what field staff do next."""
    if ok:
        return (f"TEITEN sensor {sensor_id}: ENROLLED at {when}.\n\n{detail}\n\n"
                "The one-time token was removed from teiten.toml. Nothing to do.\n")
    todo = _TODO.get(reason, "see the detail above; central's operators can tell more from "
                     "its log")
    return (f"TEITEN sensor {sensor_id}: enrolment FAILED at {when}: {reason}.\n\n"
            f"{detail}\n\nWhat to do: {todo}.\n"
            "Now: the board captures nothing and sends nothing until it is enrolled.\n")
