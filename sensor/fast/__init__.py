"""The compiled twin of the board's core: decode, aggregate and encode in C, same bytes.

`kernel` adapts `sensor.fast._fast` (the C extension, sources in src/, see
docs/performance.md) to the reference's interface (`sensor.core.aggregate`); `pack`
encodes summaries (`encode_interval`: a closed interval's bytes with no rows made).  The
pure-Python core stays the reference and the fallback: `available()` is False when the
extension is not built, and the equivalence tests check that both paths give the same
bytes.
"""

from sensor.fast.kernel import (
    FastClosed,
    FastHourlyAggregation,
    FastInterval,
    available,
    pack_ahead,
)
from sensor.fast.pack import encode_interval, encode_summary

__all__ = ["FastClosed", "FastHourlyAggregation", "FastInterval", "available",
           "encode_interval", "encode_summary", "pack_ahead"]
