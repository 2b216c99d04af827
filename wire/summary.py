"""Summary format v1: one UTC hour of darknet traffic as a msgpack map.

Strategy: `Summary` is a frozen record; `encode_summary` writes it canonically (every table
sorted, every map in key order) so the same summary always gives the same bytes, which is
what makes signed test vectors possible; `decode_summary` checks every field's type and
range and raises `SummaryFormatError` for anything else, so a central site can feed it
untrusted bytes.  Readers ignore top-level keys they do not know: a minor addition does not
need a new major version.  The byte-level layout is in docs/summary-format.md.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, TypeVar

import msgpack

SUMMARY_VERSION: Final = 1
PROTO_NAMES: Final = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
PROTO_NUMBERS: Final = {name: number for number, name in PROTO_NAMES.items()}
# Scanner fingerprints by name, with their bit in a source row's `fingerprints` field.
FINGERPRINT_BITS: Final = {"mirai": 0x01, "zmap": 0x02, "masscan": 0x04}
FINGERPRINTS: Final = tuple(FINGERPRINT_BITS)
BACKSCATTER_KINDS: Final = ("tcp_synack", "tcp_rst", "icmp_error", "icmp_echo_reply")
# IP-length histogram buckets, by lower bound (bytes).
SIZE_BUCKETS: Final = (0, 40, 60, 80, 128, 256, 512, 1024, 1500)

# Source-row estimate bits.
EST_PORTS: Final = 0x01
EST_DESTINATIONS: Final = 0x02



class SummaryFormatError(ValueError):
    """The bytes are not a valid summary; the message names the field."""


# Table rows are named tuples: immutable and hashable like the frozen records elsewhere,
# and cheap to build, which matters when a summary holds 262,144 source rows.
class PortRow(NamedTuple):
    proto: int
    port: int | None  # TCP/UDP destination port, ICMP type, None for fragments/other protocols
    packets: int
    bytes: int
    backscatter: int
    sources: int
    sources_estimated: bool = False


class IcmpCodeRow(NamedTuple):
    proto: int
    type: int
    code: int
    packets: int


class SourceRow(NamedTuple):
    address: bytes  # 4 bytes IPv4 or 16 bytes IPv6, network order
    packets: int
    bytes: int
    first_us: int
    last_us: int
    ports: int
    destinations: int
    ttl: int
    fingerprints: int  # bit set: mirai 1, zmap 2, masscan 4
    estimated: int = 0  # EST_PORTS | EST_DESTINATIONS


class DestinationRow(NamedTuple):
    address: bytes  # 4 bytes IPv4 address, or 8 bytes IPv6 /64 prefix
    packets: int


@dataclass(frozen=True, slots=True)
class Summary:
    sensor_id: str
    hour_start: int  # Unix seconds, UTC, a multiple of bucket_seconds
    bucket_seconds: int
    darknet: tuple[str, ...]
    packets: int
    bytes: int
    fragments: int
    sources_distinct: int
    sources_distinct_estimated: bool
    sources_overflow: int  # packets from sources beyond the per-hour cap
    destinations_overflow: int  # packets to destinations beyond the cap
    ports: tuple[PortRow, ...]
    icmp_codes: tuple[IcmpCodeRow, ...]
    sources: tuple[SourceRow, ...]
    destinations: tuple[DestinationRow, ...]
    tcp_flags: tuple[tuple[int, int], ...]
    ttl: tuple[tuple[int, int], ...]
    sizes: tuple[tuple[int, int], ...]
    fingerprints: Mapping[str, int]
    backscatter: Mapping[str, int]
    malformed: Mapping[str, int]
    sketch: Mapping[str, Any] = field(default_factory=dict)
    health: Mapping[str, Any] = field(default_factory=dict)
    version: int = SUMMARY_VERSION

    @property
    def hour_end(self) -> int:
        return self.hour_start + self.bucket_seconds

    @property
    def backscatter_total(self) -> int:
        return sum(self.backscatter.values())

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())


def _port_sort_key(row: PortRow) -> tuple[int, int]:
    return row.proto, -1 if row.port is None else row.port


def _addr_sort_key(address: bytes) -> tuple[int, bytes]:
    return len(address), address


# The seven big tables, which a faster encoder (sensor.fast.pack) may pack itself.
TABLE_KEYS: Final = ("ports", "icmp_codes", "sources", "destinations", "tcp_flags", "ttl",
                     "sizes")


def summary_fields(s: Summary, *, tables: bool = True) -> list[tuple[str, Any]]:
    """Every top-level key of the document in canonical order, with its value.

    The one definition of the key order (docs/summary-format.md): the reference encoder
    packs these as a map; `sensor.fast.pack` writes the same keys in the same order with
    the tables (`TABLE_KEYS`, None here when `tables` is False) packed in C.
    """
    def rows(make: Callable[[], list[Any]]) -> list[Any] | None:
        return make() if tables else None

    return [
        ("v", s.version),
        ("sensor", s.sensor_id),
        ("hour", s.hour_start),
        ("len", s.bucket_seconds),
        ("darknet", list(s.darknet)),
        ("packets", s.packets),
        ("bytes", s.bytes),
        ("fragments", s.fragments),
        ("sources_distinct", [s.sources_distinct, s.sources_distinct_estimated]),
        ("sources_overflow", s.sources_overflow),
        ("destinations_overflow", s.destinations_overflow),
        ("ports", rows(lambda: [
            [r.proto, r.port, r.packets, r.bytes, r.backscatter, r.sources, r.sources_estimated]
            for r in sorted(s.ports, key=_port_sort_key)])),
        ("icmp_codes", rows(lambda: [
            [r.proto, r.type, r.code, r.packets]
            for r in sorted(s.icmp_codes, key=lambda r: (r.proto, r.type, r.code))])),
        ("sources", rows(lambda: [
            [r.address, r.packets, r.bytes, r.first_us, r.last_us, r.ports,
             r.destinations, r.ttl, r.fingerprints, r.estimated]
            for r in sorted(s.sources, key=lambda r: _addr_sort_key(r.address))])),
        ("destinations", rows(lambda: [
            [r.address, r.packets]
            for r in sorted(s.destinations, key=lambda r: _addr_sort_key(r.address))])),
        ("tcp_flags", rows(lambda: [list(p) for p in sorted(s.tcp_flags)])),
        ("ttl", rows(lambda: [list(p) for p in sorted(s.ttl)])),
        ("sizes", rows(lambda: [list(p) for p in sorted(s.sizes)])),
        ("fingerprints", {k: s.fingerprints[k] for k in sorted(s.fingerprints)}),
        ("backscatter", {k: s.backscatter[k] for k in sorted(s.backscatter)}),
        ("malformed", {k: s.malformed[k] for k in sorted(s.malformed)}),
        ("sketch", sorted_map(s.sketch)),
        ("health", sorted_map(s.health)),
    ]


def encode_summary(s: Summary) -> bytes:
    """Canonical msgpack bytes of `s` (docs/summary-format.md), in pure Python: the
    reference encoder.  The board packs with `sensor.fast.encode_summary`, same bytes."""
    packed: bytes = msgpack.packb(dict(summary_fields(s)), use_bin_type=True)
    return packed


def sorted_map(m: Mapping[str, Any]) -> dict[str, Any]:
    """`m` with its keys (and its nested maps' keys) sorted: the canonical map order."""
    return {k: sorted_map(v) if isinstance(v, Mapping) else v for k, v in sorted(m.items())}


# --- decoding: every field checked ------------------------------------------------------

T = TypeVar("T")
# Counters fit a signed 64-bit integer, so any SQL store can hold them (a signed summary
# with 2**64 - 1 packets must not be able to wedge a central site's rollup).
_U64: Final = (1 << 63) - 1
# Table sizes a reader accepts: generous multiples of the sensor's own bounds, small enough
# that a tiny, highly compressible envelope cannot make a central site allocate gigabytes.
MAX_SOURCE_ROWS: Final = 1 << 20
MAX_DESTINATION_ROWS: Final = 1 << 20
MAX_PORT_ROWS: Final = 2 * 65_536 + 4 * 256
MAX_ICMP_ROWS: Final = 2 * 65_536
MAX_PAIR_ROWS: Final = 1 << 12
# Latest representable instant (9999-12-31T23:59:59.999999Z): times beyond it are malformed.
MAX_TIME_US: Final = 253_402_300_799_999_999
# Latest interval start a reader accepts (one day of `len` before MAX_TIME_US).  The sensor
# counts frames timed after MAX_HOUR as malformed (sensor.core.decode.TS_MAX_US), so every
# summary it writes stays readable.
MAX_HOUR: Final = MAX_TIME_US // 1_000_000 - 86_400


def _fail(what: str) -> SummaryFormatError:
    return SummaryFormatError(f"malformed summary: {what}")


def _uint(value: object, what: str, limit: int = _U64) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise _fail(f"{what} must be an integer in 0..{limit}, got {value!r:.40}")
    return value


def _bool(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise _fail(f"{what} must be a boolean, got {value!r:.40}")
    return value


def _str(value: object, what: str, max_len: int = 256) -> str:
    if type(value) is not str or len(value) > max_len:
        raise _fail(f"{what} must be a string of at most {max_len} characters")
    return value


def _list(value: object, what: str, max_len: int = MAX_PAIR_ROWS) -> list[Any]:
    if type(value) is not list:
        raise _fail(f"{what} must be an array")
    if len(value) > max_len:
        raise _fail(f"{what} has {len(value)} entries, more than the {max_len} a reader accepts")
    return value


def _row(value: object, what: str, n: int) -> list[Any]:
    row = _list(value, what)
    if len(row) < n:  # longer rows are a minor-version extension: extra columns ignored
        raise _fail(f"{what} must have at least {n} columns, got {len(row)}")
    return row


def _map(value: object, what: str) -> dict[str, Any]:
    if type(value) is not dict or not all(type(k) is str for k in value):
        raise _fail(f"{what} must be a map with string keys")
    return value


def _counts(value: object, what: str) -> dict[str, int]:
    return {k: _uint(v, f"{what}.{k}") for k, v in _map(value, what).items()}


def _pairs(value: object, what: str, key_limit: int) -> tuple[tuple[int, int], ...]:
    out = []
    for i, item in enumerate(_list(value, what)):
        row = _row(item, f"{what}[{i}]", 2)
        out.append((_uint(row[0], f"{what}[{i}] key", key_limit), _uint(row[1], f"{what}[{i}]")))
    return tuple(out)


def _rows(
    value: object, what: str, parse: Callable[[list[Any], str], T], n: int, max_rows: int
) -> tuple[T, ...]:
    return tuple(
        parse(_row(item, f"{what}[{i}]", n), f"{what}[{i}]")
        for i, item in enumerate(_list(value, what, max_rows))
    )


def _port_row(r: list[Any], w: str) -> PortRow:
    port = None if r[1] is None else _uint(r[1], f"{w}.port", 0xFFFF)
    return PortRow(
        _uint(r[0], f"{w}.proto", 255), port, _uint(r[2], f"{w}.packets"),
        _uint(r[3], f"{w}.bytes"), _uint(r[4], f"{w}.backscatter"),
        _uint(r[5], f"{w}.sources"), _bool(r[6], f"{w}.sources_estimated"),
    )


def _icmp_row(r: list[Any], w: str) -> IcmpCodeRow:
    return IcmpCodeRow(
        _uint(r[0], f"{w}.proto", 255), _uint(r[1], f"{w}.type", 255),
        _uint(r[2], f"{w}.code", 255), _uint(r[3], f"{w}.packets"),
    )


def _address(value: object, what: str, sizes: tuple[int, ...]) -> bytes:
    if type(value) is not bytes or len(value) not in sizes:
        raise _fail(f"{what} must be {' or '.join(map(str, sizes))} bytes")
    return value


_INT_ONLY: Final = {int}


def _source_row(r: list[Any], w: str) -> SourceRow:
    # Fast path for the common, valid row (a summary can hold 262,144 of them): one pass of
    # checks; anything odd falls through to the field-by-field checks that name the field.
    a = r[0]
    v = r[1:10]
    if (
        type(a) is bytes
        and len(a) in (4, 16)
        and set(map(type, v)) == _INT_ONLY
        and min(v) >= 0
        and max(v[0], v[1], v[4], v[5]) <= _U64
        and v[2] <= MAX_TIME_US
        and v[3] <= MAX_TIME_US
        and max(v[6], v[7], v[8]) <= 0xFF
    ):
        return SourceRow(a, *v)
    return SourceRow(
        _address(r[0], f"{w}.address", (4, 16)), _uint(r[1], f"{w}.packets"),
        _uint(r[2], f"{w}.bytes"), _uint(r[3], f"{w}.first_us", MAX_TIME_US),
        _uint(r[4], f"{w}.last_us", MAX_TIME_US),
        _uint(r[5], f"{w}.ports"), _uint(r[6], f"{w}.destinations"),
        _uint(r[7], f"{w}.ttl", 255), _uint(r[8], f"{w}.fingerprints", 0xFF),
        _uint(r[9], f"{w}.estimated", 0xFF),
    )


def _dest_row(r: list[Any], w: str) -> DestinationRow:
    return DestinationRow(_address(r[0], f"{w}.address", (4, 8)), _uint(r[1], f"{w}.packets"))


def _sources_in(rows: tuple[SourceRow, ...], hour: int, bucket: int) -> tuple[SourceRow, ...]:
    """Every source was seen inside the interval, first before last: a summary cannot
    make an address look older or younger than the hour it describes."""
    if rows:
        lo, hi = hour * 1_000_000, (hour + bucket) * 1_000_000
        firsts = [r.first_us for r in rows]
        lasts = [r.last_us for r in rows]
        if min(firsts) < lo or max(lasts) >= hi or any(map(operator.gt, firsts, lasts)):
            raise _fail("sources: first_us/last_us must lie in the interval, first <= last")
    return rows


_REQUIRED: Final = (
    "v", "sensor", "hour", "len", "darknet", "packets", "bytes", "fragments",
    "sources_distinct", "sources_overflow", "destinations_overflow", "ports", "icmp_codes",
    "sources", "destinations", "tcp_flags", "ttl", "sizes", "fingerprints", "backscatter",
    "malformed",
)


def decode_summary(data: bytes) -> Summary:
    """Parse and check summary bytes; raise `SummaryFormatError` on anything malformed."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise _fail(f"not msgpack ({type(exc).__name__}: {exc})") from None
    return decode_document(doc)


def decode_document(doc: object) -> Summary:
    """Check an unpacked summary document (what `decode_summary` does after msgpack).

    central/columns.py calls it with the big tables set aside, to check everything else.
    """
    doc = _map(doc, "top level")
    version = _uint(doc.get("v"), "v")
    if version != SUMMARY_VERSION:
        raise _fail(f"unsupported major version {version} (this reader knows 1)")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise _fail(f"missing fields {', '.join(missing)}")
    distinct = _row(doc["sources_distinct"], "sources_distinct", 2)
    bucket = _uint(doc["len"], "len", 86_400)
    hour = _uint(doc["hour"], "hour", MAX_HOUR)
    if bucket == 0 or hour % bucket:
        raise _fail("hour must be a multiple of a non-zero len")
    return Summary(
        version=version,
        sensor_id=_str(doc["sensor"], "sensor", 63),
        hour_start=hour,
        bucket_seconds=bucket,
        darknet=tuple(_str(x, "darknet[]", 64) for x in _list(doc["darknet"], "darknet")),
        packets=_uint(doc["packets"], "packets"),
        bytes=_uint(doc["bytes"], "bytes"),
        fragments=_uint(doc["fragments"], "fragments"),
        sources_distinct=_uint(distinct[0], "sources_distinct[0]"),
        sources_distinct_estimated=_bool(distinct[1], "sources_distinct[1]"),
        sources_overflow=_uint(doc["sources_overflow"], "sources_overflow"),
        destinations_overflow=_uint(doc["destinations_overflow"], "destinations_overflow"),
        ports=_rows(doc["ports"], "ports", _port_row, 7, MAX_PORT_ROWS),
        icmp_codes=_rows(doc["icmp_codes"], "icmp_codes", _icmp_row, 4, MAX_ICMP_ROWS),
        sources=_sources_in(
            _rows(doc["sources"], "sources", _source_row, 10, MAX_SOURCE_ROWS), hour, bucket
        ),
        destinations=_rows(
            doc["destinations"], "destinations", _dest_row, 2, MAX_DESTINATION_ROWS
        ),
        tcp_flags=_pairs(doc["tcp_flags"], "tcp_flags", 255),
        ttl=_pairs(doc["ttl"], "ttl", 255),
        sizes=_pairs(doc["sizes"], "sizes", 1 << 20),
        fingerprints=_counts(doc["fingerprints"], "fingerprints"),
        backscatter=_counts(doc["backscatter"], "backscatter"),
        malformed=_counts(doc["malformed"], "malformed"),
        sketch=_map(doc.get("sketch", {}), "sketch"),
        health=_map(doc.get("health", {}), "health"),
    )


# --- the JSON view (`teiten show --json`) ------------------------------------------------


def iso_utc(us: int) -> str:
    """ISO 8601 UTC with microseconds, from integer microseconds (no float rounding)."""
    seconds, micro = divmod(us, 1_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micro)
    return stamp.isoformat().replace("+00:00", "Z")


def proto_name(proto: int) -> str | int:
    return PROTO_NAMES.get(proto, proto)


def address_text(address: bytes) -> str:
    if len(address) == 4:
        return str(ipaddress.IPv4Address(address))
    if len(address) == 8:
        return f"{ipaddress.IPv6Address(address + bytes(8))}/64"
    return str(ipaddress.IPv6Address(address))


def fingerprint_list(bits: int) -> list[str]:
    return [name for name in FINGERPRINTS if bits & FINGERPRINT_BITS[name]]


def summary_to_json(s: Summary) -> dict[str, Any]:
    """The documented JSON view of a summary; tables ordered by packets, descending."""
    ports = sorted(s.ports, key=lambda r: (-r.packets, r.proto, -1 if r.port is None else r.port))
    sources = sorted(s.sources, key=lambda r: (-r.packets, _addr_sort_key(r.address)))
    dests = sorted(s.destinations, key=lambda r: (-r.packets, _addr_sort_key(r.address)))
    return {
        "version": s.version,
        "sensor_id": s.sensor_id,
        "hour_start": iso_utc(s.hour_start * 1_000_000),
        "hour_end": iso_utc(s.hour_end * 1_000_000),
        "darknet": list(s.darknet),
        "packets": s.packets,
        "bytes": s.bytes,
        "fragments": s.fragments,
        "sources_distinct": s.sources_distinct,
        "sources_distinct_estimated": s.sources_distinct_estimated,
        "by_port": [
            {
                "proto": proto_name(r.proto), "port": r.port, "packets": r.packets,
                "bytes": r.bytes, "backscatter": r.backscatter, "sources": r.sources,
                "sources_estimated": r.sources_estimated,
            }
            for r in ports
        ],
        "icmp_codes": [
            {"proto": proto_name(r.proto), "type": r.type, "code": r.code, "packets": r.packets}
            for r in sorted(s.icmp_codes, key=lambda r: (r.proto, r.type, r.code))
        ],
        "sources": [
            {
                "ip": address_text(r.address), "packets": r.packets, "bytes": r.bytes,
                "first_seen": iso_utc(r.first_us), "last_seen": iso_utc(r.last_us),
                "ports": r.ports, "destinations": r.destinations, "ttl": r.ttl,
                "fingerprints": fingerprint_list(r.fingerprints),
                "estimated": [
                    name for bit, name in ((EST_PORTS, "ports"), (EST_DESTINATIONS, "destinations"))
                    if r.estimated & bit
                ],
            }
            for r in sources
        ],
        "destinations": [{"ip": address_text(r.address), "packets": r.packets} for r in dests],
        "tcp_flags": [{"flags": f, "packets": n} for f, n in sorted(s.tcp_flags)],
        "ttl": {str(t): n for t, n in sorted(s.ttl)},
        "sizes": {str(lo): n for lo, n in sorted(s.sizes)},
        "fingerprints": {name: s.fingerprints.get(name, 0) for name in FINGERPRINTS},
        "backscatter": s.backscatter_total,
        "backscatter_kinds": {k: s.backscatter.get(k, 0) for k in BACKSCATTER_KINDS},
        "malformed": dict(s.malformed),
        "malformed_total": s.malformed_total,
        "sources_overflow": s.sources_overflow,
        "destinations_overflow": s.destinations_overflow,
        "sketch": dict(s.sketch),
        "health": dict(s.health),
    }
