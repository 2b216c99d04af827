"""A generated two-quarter central data set with planted rankings and known lifetimes.

Two sensors send hourly summaries for 2024Q4 and 2025Q1.  The summaries are built as
`wire.summary` records, sealed with `wire.envelope.seal` by per-sensor test keys and
fed to the receiver's real ingest (`central.receiver.Ingest.handle`: verify, then
`Store.store_summary`), so the report reads what the real path stored.

Planted (packets excluding backscatter for services; source packets for regions):

| services | 2024Q4 rank | 2025Q1 rank |
|---|---|---|
| 23/tcp | 1 | 1 |
| 22/tcp | 3 | 2 |
| 445/tcp | 2 | 3 |
| 8080/tcp | 4 | 4 |
| 5555/tcp | 6 | 5 (climbs from 6th to 5th) |
| 3389/tcp | 5 | 6 |
| 40000/tcp | most packets of all, but ~97 % backscatter: never in the table |

| regions | 2024Q4 rank | 2025Q1 rank |
|---|---|---|
| US | 2 | 1 |
| CN | 1 | 2 |
| NL | 4 | 3 |
| DE | 6 | 4 |
| BR | 5 | 5 |
| RU | 3 | 7 (drops out) |
| ZZ (not delegated) | more packets than any country: never ranked |

Sources have planned first sightings and lifetimes (by fingerprint); `Truth.lifetimes`
recomputes the report's shares from the plan.  osaka-02 misses 30 hours in 2025Q1 (a
sequence gap), tokyo-01 reports capture drops and 5 hours of unsynchronised clock.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.keyring import load_keyring
from central.receiver import Ingest
from central.regions import RegionTable, parse_delegated
from central.rollup import quarter_bounds
from central.store import Store
from wire.envelope import seal
from wire.keys import public_key_text
from wire.summary import PortRow, SourceRow, Summary, encode_summary
from wire.topics import topic

RIR_DIR: Final = Path(__file__).resolve().parent / "data" / "rir"
SENSORS: Final = ("osaka-02", "tokyo-01")
QUARTERS: Final = ("2024Q4", "2025Q1")
HOUR_US: Final = 3_600_000_000
BACKSCATTER_PORT: Final = 40000

# per sensor-hour packets (not backscatter) by (proto, port); backscatter port separately
SERVICE_RATES: Final = {
    "2024Q4": {(6, 23): 100, (6, 445): 80, (6, 22): 60, (6, 8080): 40, (6, 3389): 30,
               (6, 5555): 20, (6, 1433): 10, (17, 53): 5, (1, 8): 4},
    "2025Q1": {(6, 23): 100, (6, 22): 90, (6, 445): 70, (6, 8080): 40, (6, 5555): 30,
               (6, 3389): 25, (6, 1433): 10, (17, 53): 5, (1, 8): 4},
}
BACKSCATTER_RATE: Final = {"2024Q4": (300, 290), "2025Q1": (400, 390)}  # packets, of which bs
# (sources, packets per source) by country; ZZ: addresses in no delegation
REGION_PLAN: Final = {
    "2024Q4": {"CN": (60, 100), "US": (50, 100), "RU": (40, 100), "NL": (30, 100),
               "BR": (25, 100), "DE": (20, 100), "JP": (10, 100), "ZZ": (20, 500)},
    "2025Q1": {"US": (60, 100), "CN": (50, 100), "NL": (40, 100), "DE": (30, 100),
               "BR": (25, 100), "JP": (20, 100), "RU": (10, 100), "ZZ": (20, 500)},
}
EXPECTED_SERVICES: Final = {  # 2025Q1 table: (proto, port, previous rank)
    "2025Q1": [((6, 23), 1), ((6, 22), 3), ((6, 445), 2), ((6, 8080), 4), ((6, 5555), 6)],
    "2024Q4": [((6, 23), None), ((6, 445), None), ((6, 22), None), ((6, 8080), None),
               ((6, 3389), None)],
}
EXPECTED_REGIONS: Final = {
    "2025Q1": [("US", 2), ("CN", 1), ("NL", 4), ("DE", 6), ("BR", 5)],
}
LIFETIME_HOURS: Final = {  # cycled per fingerprint
    1: [0.5, 3, 10, 20, 30, 40, 45, 60, 100, 300],  # mirai: mostly gone within 48 h
    2: [1, 30, 80, 200, 500],  # zmap
    4: [2, 12],  # masscan
    0: [0, 5, 26, 47, 50, 170, 1000],  # no fingerprint
}
GAP: Final = ("osaka-02", 1_739_145_600, 30)  # 2025-02-10T00:00Z, 30 hours missing
CLOCK_TROUBLE: Final = ("tokyo-01", 1_738_368_000, 5)  # 2025-02-01T00:00Z, 5 hours
CAPTURE_DROPS: Final = ("tokyo-01", 1_740_787_200, 1234)  # 2025-03-01T00:00Z


def sensor_key(sid: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"teiten test " + sid.encode())
                                                .digest())


def region_table() -> RegionTable:
    recs = []
    for p in sorted(RIR_DIR.glob("delegated-*-extended-latest")):
        recs += parse_delegated(p.read_text().splitlines(), where=p.name)
    return RegionTable.build(recs)


@dataclass(frozen=True, slots=True)
class PlannedSource:
    address: bytes
    cc: str
    fingerprints: int
    packets: int
    first_us: int
    last_us: int  # as observed: clamped into the quarter


@dataclass
class Truth:
    sources: dict[str, list[PlannedSource]] = field(default_factory=dict)
    port_packets: dict[str, dict[tuple[int, int], list[int]]] = field(default_factory=dict)
    region_packets: dict[str, dict[str, int]] = field(default_factory=dict)
    summaries: int = 0
    hours: dict[str, dict[str, int]] = field(default_factory=dict)  # quarter -> sensor -> n

    def lifetimes(self, quarter: str, fp: int | None,
                  thresholds: tuple[int, ...] = (24, 48, 168)) -> list[tuple[int, int]]:
        """(eligible, gone) per threshold, for one fingerprint bit (0: none, None: all)."""
        _, end = quarter_bounds(quarter)
        out = []
        for t in thresholds:
            tu = t * HOUR_US
            el = gone = 0
            for s in self.sources[quarter]:
                wanted = fp is None or (fp == 0 and s.fingerprints == 0) or (
                    fp and s.fingerprints & fp)
                if wanted and s.first_us + tu <= end * 1_000_000:
                    el += 1
                    gone += s.last_us - s.first_us < tu
            out.append((el, gone))
        return out


def _addresses(table: RegionTable, cc: str, n: int, rnd: random.Random) -> list[bytes]:
    if cc == "ZZ":  # the 'available' block in the APNIC fixture: delegated to nobody
        base = int(ipaddress.IPv4Address("27.50.0.0"))
        return [(base + i + 1).to_bytes(4, "big") for i in rnd.sample(range(1000), n)]
    ranges = [(s, e) for f, s, e, c, _ in table.rows() if c == cc and f == 4]
    v6 = [(s, e) for f, s, e, c, _ in table.rows() if c == cc and f == 6]
    out: set[bytes] = set()
    while len(out) < n:
        if v6 and len(out) % 7 == 3:
            s, e = rnd.choice(v6)
            out.add(rnd.randint(s, e).to_bytes(16, "big"))
        else:
            s, e = rnd.choice(ranges)
            out.add(rnd.randint(s, e).to_bytes(4, "big"))
    return sorted(out)


def _plan_sources(quarter: str, table: RegionTable, rnd: random.Random) -> list[PlannedSource]:
    lo, hi = quarter_bounds(quarter)
    out: list[PlannedSource] = []
    fp_cycle = [1, 2, 4, 0, 0]
    counters = {k: 0 for k in LIFETIME_HOURS}
    for cc, (n, pk) in sorted(REGION_PLAN[quarter].items()):
        for i, addr in enumerate(_addresses(table, cc, n, rnd)):
            fp = fp_cycle[i % len(fp_cycle)]
            life_h = LIFETIME_HOURS[fp][counters[fp] % len(LIFETIME_HOURS[fp])]
            counters[fp] += 1
            first = rnd.randrange(lo * 1_000_000, hi * 1_000_000 - 1)
            last = min(first + int(life_h * HOUR_US), hi * 1_000_000 - 1)
            out.append(PlannedSource(addr, cc, fp, pk, first, last))
    return out


def _day_factor(quarter: str, hour: int, key: tuple[int, int]) -> int:
    day = hour // 86400
    f = 10 + day % 7  # a weekly wave, same for every service: ranks unchanged
    if quarter == "2025Q1" and key == (6, 5555) and 1_739_750_400 <= hour < 1_740_614_400:
        f += 5  # a ten-day campaign in February
    return f


def build_dataset(db_path: Path, *, bucket_seconds: int = 3600) -> Truth:
    """Write the data set into a new store at `db_path`; returns what was planted."""
    table = region_table()
    rnd = random.Random(20250101)
    truth = Truth()
    keys = {sid: sensor_key(sid) for sid in SENSORS}
    keyring_path = db_path.with_suffix(".sensors.toml")
    keyring_path.write_text("".join(
        f'[sensors.{sid}]\npublic_key = "{public_key_text(k.public_key())}"\n'
        for sid, k in keys.items()))
    keyring = load_keyring(keyring_path)
    sequence = {sid: (1 << 32) for sid in SENSORS}
    with Store(db_path) as store:
        ingest = Ingest(store, keyring_path, max_summary_bytes=1 << 26, keyring=keyring)
        for quarter in QUARTERS:
            lo, hi = quarter_bounds(quarter)
            plan = _plan_sources(quarter, table, rnd)
            truth.sources[quarter] = plan
            truth.region_packets[quarter] = {}
            for s in plan:
                truth.region_packets[quarter][s.cc] = (
                    truth.region_packets[quarter].get(s.cc, 0) + s.packets)
            # source rows by (sensor, hour)
            rows: dict[tuple[str, int], list[SourceRow]] = {}

            def present(sid: str, hour: int) -> bool:
                g_sid, g_start, g_n = GAP
                return not (sid == g_sid and g_start <= hour < g_start + g_n * 3600)

            def put(sid: str, t_first: int, t_last: int, pk: int, fp: int, addr: bytes,
                    rows: dict[tuple[str, int], list[SourceRow]] = rows) -> None:
                hour = (t_first // 1_000_000) // bucket_seconds * bucket_seconds
                if not present(sid, hour):
                    sid = next(x for x in SENSORS if x != sid)
                rows.setdefault((sid, hour), []).append(SourceRow(
                    addr, pk, pk * 60, t_first, t_last, 1, 1, 50, fp))

            for s in plan:
                sids = rnd.sample(SENSORS, 2)
                h_first = s.first_us // (bucket_seconds * 1_000_000)
                h_last = s.last_us // (bucket_seconds * 1_000_000)
                if h_first == h_last:
                    put(sids[0], s.first_us, s.last_us, s.packets, s.fingerprints, s.address)
                else:
                    end_first = (h_first + 1) * bucket_seconds * 1_000_000 - 1
                    put(sids[0], s.first_us, end_first, s.packets // 2, s.fingerprints,
                        s.address)
                    put(sids[1], s.last_us, s.last_us, s.packets - s.packets // 2,
                        s.fingerprints, s.address)
            ports_truth = truth.port_packets.setdefault(quarter, {})
            truth.hours[quarter] = dict.fromkeys(SENSORS, 0)
            for hour in range(lo, hi, bucket_seconds):
                for sid in SENSORS:
                    sequence[sid] += 1
                    if not present(sid, hour):
                        continue
                    prow = []
                    for key, rate in SERVICE_RATES[quarter].items():
                        n = rate * _day_factor(quarter, hour, key) * bucket_seconds // 36000
                        prow.append(PortRow(key[0], key[1], n, n * 60, 0, 1))
                        t = ports_truth.setdefault(key, [0, 0])
                        t[0] += n
                    bp, bs = BACKSCATTER_RATE[quarter]
                    bp, bs = bp * bucket_seconds // 3600, bs * bucket_seconds // 3600
                    prow.append(PortRow(6, BACKSCATTER_PORT, bp, bp * 60, bs, 1))
                    t = ports_truth.setdefault((6, BACKSCATTER_PORT), [0, 0])
                    t[0] += bp - bs
                    t[1] += bs
                    srows = tuple(rows.get((sid, hour), ()))
                    fps: dict[str, int] = {}
                    for r in srows:
                        for name, bit in (("mirai", 1), ("zmap", 2), ("masscan", 4)):
                            if r.fingerprints & bit:
                                fps[name] = fps.get(name, 0) + r.packets
                    health: dict[str, object] = {"partial": False,
                                                 "clock": {"synchronized": True}}
                    c_sid, c_start, c_n = CLOCK_TROUBLE
                    if sid == c_sid and c_start <= hour < c_start + c_n * 3600:
                        health["clock"] = {"synchronized": False}
                    if (sid, hour) == CAPTURE_DROPS[:2]:
                        health["capture"] = {"dropped": CAPTURE_DROPS[2], "ifdropped": 0}
                    packets = sum(r.packets for r in prow)
                    summary = Summary(
                        sensor_id=sid, hour_start=hour, bucket_seconds=bucket_seconds,
                        darknet=("192.0.2.0/24",), packets=packets, bytes=packets * 60,
                        fragments=0, sources_distinct=len(srows),
                        sources_distinct_estimated=False, sources_overflow=0,
                        destinations_overflow=0, ports=tuple(prow), icmp_codes=(),
                        sources=srows, destinations=(), tcp_flags=(), ttl=(), sizes=(),
                        fingerprints=fps, backscatter={"tcp_synack": bs}, malformed={},
                        health=health,
                    )
                    env = seal(encode_summary(summary), sensor_id=sid, sequence=sequence[sid],
                               hour_start=hour, created_us=(hour + bucket_seconds) * 1_000_000,
                               key=keys[sid])
                    reply = ingest.handle(topic(sid, "summary"), env)
                    assert reply is not None and reply.status == "stored", reply
                    truth.summaries += 1
                    truth.hours[quarter][sid] += 1
    return truth


_CACHE: dict[int, tuple[Path, Truth]] = {}


def cached_dataset(bucket_seconds: int = 3600) -> tuple[Path, Truth]:
    """Build once per test session (in a temporary folder); callers copy before writing."""
    if bucket_seconds not in _CACHE:
        # tmpfs when there is one: 8,700 fsync-ed commits cost seconds on a busy disk
        shm = Path("/dev/shm")
        d = Path(tempfile.mkdtemp(prefix="teiten-central-dataset-",
                                  dir=shm if shm.is_dir() and os.access(shm, os.W_OK)
                                  else None))
        path = d / "central.db"
        _CACHE[bucket_seconds] = (path, build_dataset(path, bucket_seconds=bucket_seconds))
    return _CACHE[bucket_seconds]


_ROLLED: dict[int, tuple[Path, Truth]] = {}


def rolled_up_dataset(bucket_seconds: int = 3600) -> tuple[Path, Truth]:
    """The data set with the fixture regions imported and every summary rolled up (cached)."""
    if bucket_seconds not in _ROLLED:
        from central.cli.report import rollup

        src, truth = cached_dataset(bucket_seconds)
        dest = src.with_name("central-rolled.db")
        with Store(src) as store:
            store.backup(dest)
        table = region_table()
        with Store(dest) as store:
            store.save_regions(list(table.rows()), [str(RIR_DIR)], ["fixtures"])
            rollup(store)
        _ROLLED[bucket_seconds] = (dest, truth)
    return _ROLLED[bucket_seconds]


def copy_db(src: Path, dest: Path) -> Path:
    """A private copy for a test that writes (SQLite's backup API)."""
    with Store(src) as store:
        store.backup(dest)
    return dest


if __name__ == "__main__":
    import sys
    import time

    t0 = time.perf_counter()
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "central-dataset.db")
    tr = build_dataset(out)
    print(f"{out}: {tr.summaries} summaries in {time.perf_counter() - t0:.1f} s")
