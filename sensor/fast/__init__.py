"""The compiled twin of the board's core: decode, aggregate and encode in C, same bytes.

`kernel` adapts `sensor.fast._fast` (the C extension, sources in src/, see
docs/performance.md) to the reference's interface (`sensor.core.aggregate`); `pack`
encodes summaries (`encode_interval`: a closed interval's bytes with no rows made).  The
pure-Python core stays the reference and the fallback: it is used when the extension is not
built (`kernel.available()`), and the equivalence tests check that both paths give the same
bytes.

Nothing is imported here: `teiten replay` loads `sensor.fast._fast` and `kernel` to start
counting before `pack` and the summary format are needed (sensor/edges/replay.py).
"""
