"""The bounds of one hour's state (`Limits`) and the interval length: what every counter of
the board, the reference (`sensor.core.aggregate`) and the compiled twin (`sensor.fast`),
is built from.

Its own module, importing only `sensor.core.sketch`'s arithmetic, so that `teiten replay`
can start counting in C before the reference core and the summary format are imported
(sensor/edges/replay.py).  docs/summary-format.md gives the memory arithmetic.
"""

from __future__ import annotations

from sensor.core.sketch import MAX_PRECISION, MIN_PRECISION, relative_error
from sensor.core.tuples import NamedTuple

# typing for type checkers only (start-up time: sensor/core/tuples.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

HOUR: Final = 3600


def check_bucket_seconds(bucket_seconds: int) -> None:
    """Raise ValueError unless an interval of `bucket_seconds` tiles the UTC hours."""
    if bucket_seconds <= 0 or (HOUR % bucket_seconds and bucket_seconds % HOUR):
        raise ValueError("bucket_seconds must divide an hour (tests) or be a whole hour")


class Limits(NamedTuple):
    """Memory bounds of one hour's state; see docs/summary-format.md for the arithmetic.

    A named tuple, not a dataclass: `teiten replay` makes one before it starts counting, and
    the dataclasses module (with inspect, ast and dis) would be 8 ms of its start-up.  Every
    aggregator checks the limits it is given (`check`), so a bad one fails where it is used.
    """

    max_sources: int = 262_144
    max_destinations: int = 65_536
    source_exact_budget: int = 1_048_576  # exact (source, port|destination) entries per hour
    source_exact_limit: int = 65_536  # one source's exact set size before it becomes a sketch
    source_big_p: int = 12  # sources that outgrew their exact set: 1.6%
    source_max_big: int = 1_024
    source_small_p: int = 6  # conversions after the budget is spent: 64 registers, 13%
    port_exact_budget: int = 262_144  # exact (port, source) entries across all ports
    port_exact_limit: int = 4_096  # a port's exact set size before it becomes a sketch
    port_big_p: int = 12  # 4,096 registers, 1.6%: ports that outgrew their exact set
    port_max_big: int = 1_024
    port_small_p: int = 7  # 128 registers, 9.2%: conversions after the budget is spent
    overflow_sketch_p: int = 14  # distinct sources beyond the cap

    def check(self) -> Limits:
        """These limits, when every bound can hold state; else ValueError naming the bound."""
        for name in LIMIT_FIELDS:
            if getattr(self, name) < 0:
                raise ValueError(f"limit {name} must not be negative")
        if self.max_sources < 1:
            raise ValueError("limit max_sources must be at least 1")
        for name in _PRECISIONS:  # checked here, not first when a sketch is made mid-hour
            p = getattr(self, name)
            if not MIN_PRECISION <= p <= MAX_PRECISION:
                raise ValueError(f"limit {name} is a sketch precision: "
                                 f"{MIN_PRECISION}..{MAX_PRECISION}, got {p}")
        return self

    def values(self) -> tuple[int, ...]:
        """The limits in LIMIT_FIELDS order: the tuple the compiled kernel takes."""
        return tuple(self)

    def sketch_description(self) -> dict[str, Any]:
        """The `sketch` map written into each summary: how estimates are made."""
        return {
            "method": "hyperloglog",
            "port_sources_exact_limit": self.port_exact_limit,
            "port_sources_exact_budget": self.port_exact_budget,
            "port_sources_rse": [
                round(relative_error(self.port_big_p), 4),
                round(relative_error(self.port_small_p), 4),
            ],
            "source_exact_limit": self.source_exact_limit,
            "source_exact_budget": self.source_exact_budget,
            "source_rse": [
                round(relative_error(self.source_big_p), 4),
                round(relative_error(self.source_small_p), 4),
            ],
            "overflow_sources_rse": round(relative_error(self.overflow_sketch_p), 4),
            "max_sources": self.max_sources,
            "max_destinations": self.max_destinations,
        }


# Limits' fields in declaration order: the order the compiled kernel takes them in.
LIMIT_FIELDS: Final[tuple[str, ...]] = Limits._fields

# The limits that are HyperLogLog precisions (2**p registers).
_PRECISIONS: Final = ("source_big_p", "source_small_p", "port_big_p", "port_small_p",
                      "overflow_sketch_p")
