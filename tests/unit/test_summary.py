"""Summary format v1: round trips, canonical bytes, strict decoding."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.summary import (
    BACKSCATTER_KINDS,
    FINGERPRINTS,
    DestinationRow,
    IcmpCodeRow,
    PortRow,
    SourceRow,
    Summary,
    SummaryFormatError,
    decode_summary,
    encode_summary,
    summary_to_json,
)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**63 - 1)
byte = st.integers(0, 255)

port_rows = st.builds(
    PortRow, byte, st.none() | st.integers(0, 65535), u64, u64, u64, u64, st.booleans()
)
def source_rows(hour: int, bucket: int) -> st.SearchStrategy[SourceRow]:
    lo, hi = hour * 1_000_000, (hour + bucket) * 1_000_000 - 1
    return st.tuples(st.integers(lo, hi), st.integers(lo, hi)).flatmap(
        lambda t: st.builds(
            SourceRow, st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
            u64, u64, st.just(min(t)), st.just(max(t)), u32, u32, byte,
            st.integers(0, 7), st.integers(0, 3),
        )
    )
dest_rows = st.builds(
    DestinationRow, st.binary(min_size=4, max_size=4) | st.binary(min_size=8, max_size=8), u64
)


def unique_by(rows: list, key) -> tuple:  # type: ignore[no-untyped-def]
    seen = {}
    for r in rows:
        seen[key(r)] = r
    return tuple(seen.values())


@st.composite
def summaries(draw: st.DrawFn) -> Summary:
    bucket = draw(st.sampled_from([3600, 60, 1]))
    hour = draw(st.integers(0, 60_000_000)) * bucket
    return Summary(
        sensor_id=draw(st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)),
        hour_start=hour,
        bucket_seconds=bucket,
        darknet=tuple(draw(st.lists(st.sampled_from(["198.51.100.0/24", "2001:db8::/32"])))),
        packets=draw(u64), bytes=draw(u64), fragments=draw(u64),
        sources_distinct=draw(u64), sources_distinct_estimated=draw(st.booleans()),
        sources_overflow=draw(u64), destinations_overflow=draw(u64),
        ports=unique_by(draw(st.lists(port_rows, max_size=20)), lambda r: (r.proto, r.port)),
        icmp_codes=unique_by(
            draw(st.lists(st.builds(IcmpCodeRow, byte, byte, byte, u64), max_size=5)),
            lambda r: (r.proto, r.type, r.code),
        ),
        sources=unique_by(
            draw(st.lists(source_rows(hour, bucket), max_size=20)), lambda r: r.address
        ),
        destinations=unique_by(draw(st.lists(dest_rows, max_size=10)), lambda r: r.address),
        tcp_flags=tuple(sorted(draw(st.dictionaries(byte, u64, max_size=5)).items())),
        ttl=tuple(sorted(draw(st.dictionaries(byte, u64, max_size=5)).items())),
        sizes=tuple(sorted(draw(st.dictionaries(st.sampled_from([0, 40, 1500]), u64)).items())),
        fingerprints={k: draw(u64) for k in FINGERPRINTS},
        backscatter={k: draw(u64) for k in BACKSCATTER_KINDS},
        malformed=draw(st.dictionaries(st.sampled_from(["tcp_truncated", "not_ip"]), u64)),
        sketch={"method": "hyperloglog"},
        health=draw(st.dictionaries(st.sampled_from(["partial", "x"]), st.booleans())),
    )


def canonical(s: Summary) -> Summary:
    return decode_summary(encode_summary(s))


@settings(max_examples=150, deadline=None)
@given(summaries())
def test_round_trip_is_lossless_and_canonical(s: Summary) -> None:
    data = encode_summary(s)
    back = decode_summary(data)
    # Same content (tables may come back in canonical order) and identical bytes again.
    assert sorted(back.ports, key=repr) == sorted(s.ports, key=repr)
    assert sorted(back.sources, key=repr) == sorted(s.sources, key=repr)
    assert back.health == s.health and back.packets == s.packets
    assert encode_summary(back) == data
    assert canonical(back) == back
    summary_to_json(back)  # the JSON view accepts every valid summary


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_decode_rejects_garbage_with_format_error(data: bytes) -> None:
    with contextlib.suppress(SummaryFormatError):
        decode_summary(data)


def minimal() -> dict:  # type: ignore[type-arg]
    s = Summary(
        "s1", 3600, 3600, (), 0, 0, 0, 0, False, 0, 0, (), (), (), (), (), (), (), {}, {}, {}
    )
    return msgpack.unpackb(encode_summary(s))  # type: ignore[no-any-return]


def test_unknown_keys_are_ignored_and_missing_keys_named() -> None:
    doc = minimal()
    doc["future_field"] = {"anything": [1, 2]}
    assert decode_summary(msgpack.packb(doc)).sensor_id == "s1"
    del doc["ports"]
    with pytest.raises(SummaryFormatError, match="ports"):
        decode_summary(msgpack.packb(doc))


@pytest.mark.parametrize(
    ("field", "value"),
    [("v", 2), ("packets", -1), ("hour", 3601), ("sensor", 5),
     ("ports", [[6, 70000, 1, 1, 0, 1, False]]),
     ("sources", [[b"\x01\x02", 1, 1, 0, 0, 1, 1, 64, 0, 0]]), ("malformed", {"x": "y"}),
     ("packets", 2**64 - 1),
     ("sources", [[b"\x01\x02\x03\x04", 1, 1, 7200 * 10**6, 3600 * 10**6, 1, 1, 64, 0, 0]]),
     ("sources", [[b"\x01\x02\x03\x04", 1, 1, 0, 10, 1, 1, 64, 0, 0]]),
     ("destinations", [[b"\x01\x02\x03\x04", 1]] * (2**20 + 1))],
)
def test_bad_fields_are_named(field: str, value: object) -> None:
    doc = minimal()
    doc[field] = value
    with pytest.raises(SummaryFormatError):
        decode_summary(msgpack.packb(doc, use_bin_type=True))
