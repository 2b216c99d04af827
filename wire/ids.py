"""Sensor ids: the one rule every part checks (topics, envelopes, configs, the keyring).

`^[a-z0-9][a-z0-9-]{0,62}$`: short, lower-case, safe in an MQTT topic, a file name and a
certificate's common name.  `is_valid_sensor_id` is the check (no regex engine: it runs
for every envelope); `validate_sensor_id` raises with a message saying what to write.
"""

from __future__ import annotations

# typing for type checkers only (start-up time: sensor/core/tuples.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

SENSOR_ID_MAX: Final = 63


def is_valid_sensor_id(value: str) -> bool:
    """`^[a-z0-9][a-z0-9-]{0,62}$`, without a regex engine on the hot path."""
    if not isinstance(value, str) or not 1 <= len(value) <= SENSOR_ID_MAX:
        return False
    if not value.isascii() or not (value[0].islower() or value[0].isdigit()):
        return False
    return all(c.islower() or c.isdigit() or c == "-" for c in value)


def validate_sensor_id(value: str) -> str:
    """Return `value` if it is a valid sensor id, else raise ValueError saying why."""
    if not is_valid_sensor_id(value):
        raise ValueError(
            f"invalid sensor id {value!r}: use 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit (for example 'tokyo-01')"
        )
    return value
