"""Sensor ids: the one rule every part checks (re-exported by `uplink.keys`).

Kept apart from `uplink.keys` so that commands which only need the check (`teiten replay`)
do not import the cryptography stack at start-up.
"""

from __future__ import annotations

import re
from typing import Final

SENSOR_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def validate_sensor_id(value: str) -> str:
    """Return `value` if it is a valid sensor id, else raise ValueError saying why."""
    if not isinstance(value, str) or SENSOR_ID_RE.fullmatch(value) is None:
        raise ValueError(
            f"invalid sensor id {value!r}: use 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit (for example 'tokyo-01')"
        )
    return value
