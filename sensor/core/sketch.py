"""Distinct counting with a memory bound: exact sets that turn into HyperLogLog sketches.

Strategy: below its bound a distinct count is exact (a Python set, or a few inline slots);
once keeping it exact would break the hour's memory bound it becomes a HyperLogLog sketch
of 2**p one-byte registers (Flajolet et al. 2007, with the linear-counting small-range
correction).  The relative standard error of a sketch is 1.04 / sqrt(2**p); it is written
into every summary's `sketch` map so a reader knows how far an estimate can be trusted.

Keys are integers (addresses, ports); `mix64` spreads them into 64 well-mixed bits.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable

# typing for type checkers only (start-up time: sensor/core/tuples.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

_M64: Final = (1 << 64) - 1


def mix64(key: int) -> int:
    """SplitMix64 finaliser over `key` folded to 64 bits (keys up to 129 bits)."""
    x = (key ^ (key >> 64) ^ (key >> 128)) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _estimate(registers: bytes | bytearray) -> int:
    m = len(registers)
    alpha = 0.7213 / (1 + 1.079 / m) if m >= 128 else {16: 0.673, 32: 0.697, 64: 0.709}[m]
    total = math.fsum(_POW2_NEG[r] for r in registers)
    zeros = registers.count(0)
    raw = alpha * m * m / total
    if raw <= 2.5 * m and zeros:
        return round(m * math.log(m / zeros))
    return round(raw)


_POW2_NEG: Final = tuple(2.0**-r for r in range(66))


# The HyperLogLog precisions a sketch may have (2**p registers).
MIN_PRECISION: Final = 4
MAX_PRECISION: Final = 16


def relative_error(p: int) -> float:
    """Relative standard error of a HyperLogLog with 2**p registers."""
    return 1.04 / math.sqrt(1 << p)


class HyperLogLog:
    """A HyperLogLog sketch with 2**p registers (4 <= p <= 16)."""

    __slots__ = ("_registers", "_shift", "_wmask", "p")

    def __init__(self, p: int) -> None:
        if not MIN_PRECISION <= p <= MAX_PRECISION:
            raise ValueError(f"HyperLogLog precision must be 4..16, got {p}")
        self.p = p
        self._registers = bytearray(1 << p)
        self._shift = 64 - p
        self._wmask = (1 << (64 - p)) - 1

    def add(self, key: int) -> None:
        h = mix64(key)
        index = h >> self._shift
        rank = self._shift - (h & self._wmask).bit_length() + 1
        if rank > self._registers[index]:
            self._registers[index] = rank

    def estimate(self) -> int:
        return _estimate(self._registers)

    def nbytes(self) -> int:
        return len(self._registers)


class BudgetedDistinct:
    """A family of distinct counters (one per key) sharing one budget of exact entries.

    Each counter is an exact set until it holds `exact_limit` items or the family's budget
    of exact entries is spent; then it becomes a sketch.  A counter that outgrew its limit
    while the budget lasted gets a precise sketch (`big_p`), up to `max_big` of them; any
    other conversion gets a small one (`small_p`).  Memory is therefore bounded by
    budget x (set entry) + keys x 2**big_p (first max_big) + keys x 2**small_p.
    """

    __slots__ = (
        "_big_left",
        "_budget_left",
        "_exact",
        "_sketch",
        "big_p",
        "exact_limit",
        "small_p",
    )

    def __init__(
        self, *, budget: int, exact_limit: int, big_p: int, small_p: int, max_big: int
    ) -> None:
        self._exact: dict[object, set[int]] = {}
        self._sketch: dict[object, HyperLogLog] = {}
        self._budget_left = budget
        self._big_left = max_big
        self.exact_limit = exact_limit
        self.big_p = big_p
        self.small_p = small_p

    def add(self, key: object, item: int) -> None:
        exact = self._exact.get(key)
        if exact is not None:
            if item in exact:
                return
            if len(exact) < self.exact_limit and self._budget_left > 0:
                exact.add(item)
                self._budget_left -= 1
                return
            self._convert(key, exact, item)
            return
        sketch = self._sketch.get(key)
        if sketch is not None:
            sketch.add(item)
            return
        if self._budget_left > 0:
            self._exact[key] = {item}
            self._budget_left -= 1
            return
        sketch = HyperLogLog(self.small_p)
        sketch.add(item)
        self._sketch[key] = sketch

    def _convert(self, key: object, exact: set[int], item: int) -> None:
        if len(exact) >= self.exact_limit and self._big_left > 0:
            self._big_left -= 1
            sketch = HyperLogLog(self.big_p)
        else:
            sketch = HyperLogLog(self.small_p)
        for old in exact:
            sketch.add(old)
        sketch.add(item)
        self._budget_left += len(exact)
        del self._exact[key]
        self._sketch[key] = sketch

    def count(self, key: object) -> tuple[int, bool]:
        """(distinct count, estimated?) for `key`; (0, False) when never seen."""
        exact = self._exact.get(key)
        if exact is not None:
            return len(exact), False
        sketch = self._sketch.get(key)
        if sketch is not None:
            return sketch.estimate(), True
        return 0, False

    @property
    def sketches(self) -> int:
        return len(self._sketch)


class RowDistinct:
    """Distinct counters for the rows of a large table (one per source), memory-bounded.

    Rows are dense integers.  A row's first `slots` values sit inline in one flat array
    (most sources, spoofed floods above all, touch a handful of ports and addresses and
    cost no Python object); past that the row gets an exact set while the table's shared
    budget of exact entries lasts and the set stays under `exact_limit`.  Past either bound
    the row becomes a sketch: a precise one (`big_p`, at most `max_big` of them) for a row
    that outgrew `exact_limit`, else `small_p` registers in a shared pool.
    """

    __slots__ = (
        "_big_left",
        "_budget_left",
        "_inline",
        "_n",
        "_pool",
        "_pool_row",
        "_sets",
        "_shift",
        "_sketches",
        "_wmask",
        "_zeros",
        "big_p",
        "exact_limit",
        "slots",
        "small_p",
    )

    # Row states beyond "n inline values" (n <= slots <= 200).
    _SET: Final = 250
    _POOLED: Final = 251
    _BIG: Final = 252

    def __init__(
        self,
        *,
        budget: int,
        exact_limit: int,
        big_p: int,
        small_p: int,
        max_big: int,
        slots: int = 4,
    ) -> None:
        for p in (big_p, small_p):
            if not MIN_PRECISION <= p <= MAX_PRECISION:
                raise ValueError(f"sketch precision must be 4..16, got {p}")
        if not 1 <= slots <= 200:
            raise ValueError(f"inline slots must be 1..200, got {slots}")
        self.slots = slots
        self.exact_limit = max(slots + 1, exact_limit)
        self.big_p = big_p
        self.small_p = small_p
        self._budget_left = budget
        self._big_left = max_big
        self._inline = array("Q")
        self._n = bytearray()
        self._sets: dict[int, set[int]] = {}
        self._sketches: dict[int, HyperLogLog] = {}
        self._pool = bytearray()
        self._pool_row: dict[int, int] = {}
        self._shift = 64 - small_p
        self._wmask = (1 << (64 - small_p)) - 1
        self._zeros = array("Q", bytes(8 * slots))

    def add_row(self) -> None:
        self._inline.extend(self._zeros)
        self._n.append(0)

    def add(self, row: int, item: int) -> None:
        n = self._n[row]
        if n <= self.slots:
            base = row * self.slots
            inline = self._inline
            if n and item in inline[base : base + n]:
                return
            if n < self.slots:
                inline[base + n] = item
                self._n[row] = n + 1
                return
            values = set(inline[base : base + n])
            values.add(item)
            if self._budget_left >= len(values):
                self._budget_left -= len(values)
                self._sets[row] = values
                self._n[row] = self._SET
            else:
                self._to_pool(row, values)
        elif n == self._SET:
            values = self._sets[row]
            if item in values:
                return
            if len(values) < self.exact_limit and self._budget_left > 0:
                values.add(item)
                self._budget_left -= 1
                return
            del self._sets[row]
            self._budget_left += len(values)
            values.add(item)
            if len(values) > self.exact_limit and self._big_left > 0:
                self._big_left -= 1
                sketch = HyperLogLog(self.big_p)
                for value in values:
                    sketch.add(value)
                self._sketches[row] = sketch
                self._n[row] = self._BIG
            else:
                self._to_pool(row, values)
        elif n == self._POOLED:
            self._pool_add(self._pool_row[row], item)
        else:
            self._sketches[row].add(item)

    def _to_pool(self, row: int, values: Iterable[int]) -> None:
        offset = len(self._pool)
        self._pool.extend(bytes(1 << self.small_p))
        self._pool_row[row] = offset
        for value in values:
            self._pool_add(offset, value)
        self._n[row] = self._POOLED

    def _pool_add(self, offset: int, item: int) -> None:
        h = mix64(item)
        index = offset + (h >> self._shift)
        rank = self._shift - (h & self._wmask).bit_length() + 1
        if rank > self._pool[index]:
            self._pool[index] = rank

    def count(self, row: int) -> tuple[int, bool]:
        """(distinct count, estimated?) for `row`."""
        n = self._n[row]
        if n <= self.slots:
            return n, False
        if n == self._SET:
            return len(self._sets[row]), False
        if n == self._POOLED:
            offset = self._pool_row[row]
            return _estimate(self._pool[offset : offset + (1 << self.small_p)]), True
        return self._sketches[row].estimate(), True
