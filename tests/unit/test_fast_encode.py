"""The C table packer (sensor.fast.pack.encode_summary_fast) writes the reference's bytes."""

from __future__ import annotations

import dataclasses
import random

import pytest

from sensor.fast import kernel as fastpath
from sensor.fast.pack import encode_summary, encode_summary_fast
from wire.summary import (
    DestinationRow,
    IcmpCodeRow,
    PortRow,
    SourceRow,
    Summary,
    decode_summary,
)
from wire.summary import encode_summary as encode_summary_reference

pytestmark = pytest.mark.skipif(not fastpath.available(), reason="sensor.fast._fast is not built")

# Values at every msgpack format boundary (fixint, uint8/16/32/64, negative forms).
EDGES = (0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
         2**64 - 1, -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63))


def random_summary(rng: random.Random, n: int) -> Summary:
    def num() -> int:
        if rng.random() < 0.3:
            return rng.choice(EDGES)
        return rng.randrange(1 << rng.choice((7, 16, 40)))

    def addr(sizes: tuple[int, ...]) -> bytes:
        return rng.randbytes(rng.choice(sizes)) if rng.random() < 0.9 else bytes(4)

    return Summary(
        sensor_id=rng.choice(("s", "x" * 31, "y" * 32, "z" * 300)), hour_start=num(),
        bucket_seconds=3600, darknet=("198.51.100.0/24",), packets=num(), bytes=num(),
        fragments=num(), sources_distinct=num(), sources_distinct_estimated=rng.random() < 0.5,
        sources_overflow=num(), destinations_overflow=num(),
        ports=tuple(PortRow(rng.randrange(256), rng.choice((None, rng.randrange(65536))), num(),
                            num(), num(), num(), rng.random() < 0.5) for _ in range(n)),
        icmp_codes=tuple(IcmpCodeRow(rng.choice((1, 58)), rng.randrange(4), rng.randrange(3),
                                     num()) for _ in range(n // 3)),
        sources=tuple(SourceRow(addr((4, 16)), num(), num(), num(), num(), num(), num(),
                                rng.randrange(256), rng.randrange(8), rng.randrange(4))
                      for _ in range(n)),
        destinations=tuple(DestinationRow(addr((4, 8)), num()) for _ in range(n)),
        tcp_flags=tuple((rng.randrange(256), num()) for _ in range(rng.randrange(20))),
        ttl=tuple((rng.randrange(256), num()) for _ in range(rng.randrange(300))),
        sizes=((0, 1), (40, 2)), fingerprints={"mirai": 1, "zmap": 0, "masscan": 2},
        backscatter={"tcp_rst": 3}, malformed={"not_ip": 1},
        sketch={"b": 1.5, "a": {"y": [1, 2], "x": None}}, health={"partial": True},
    )


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 300, 70_000])
def test_packed_tables_equal_reference(n: int) -> None:
    rng = random.Random(n)
    for _ in range(3 if n < 1000 else 1):
        s = random_summary(rng, n)
        assert encode_summary(s) == encode_summary_reference(s)


def test_unexpected_rows_fall_back_to_the_reference() -> None:
    s = random_summary(random.Random(3), 10)
    odd = dataclasses.replace(s, ports=(*s.ports, PortRow(6, 23, 1, 2, 3, 4.5, False)))  # type: ignore[arg-type]
    assert encode_summary_fast(odd) is None
    assert encode_summary(odd) == encode_summary_reference(odd)
    huge = dataclasses.replace(s, sources=(s.sources[0]._replace(packets=2**64),))
    assert encode_summary_fast(huge) is None


def test_round_trip_through_the_decoder() -> None:
    s = random_summary(random.Random(4), 50)
    s = dataclasses.replace(s, hour_start=3600 * 5, sensor_id="s1")
    s = dataclasses.replace(s, sources=tuple(r._replace(first_us=1, last_us=2) for r in s.sources))
    data = encode_summary(s)
    try:
        back = decode_summary(data)
    except ValueError:
        return  # random values may break decoder range checks; the bytes were compared above
    assert encode_summary(back) == encode_summary_reference(back) == data
