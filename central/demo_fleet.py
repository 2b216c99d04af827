"""A generated fleet for `make demo`: 3 sensors, two full quarters, known plants.

Strategy: pure generation, then files.  `generate(plan)` yields, hour by hour, one
`wire.summary.Summary` per sensor for 2024Q4 and 2025Q1 (4,368 hours, 13,104 summaries),
deterministic from `plan.seed` and independent of today's date; `write_fleet` seals each
with its sensor's Ed25519 key (`wire.envelope.seal`) into one spool-style directory per
sensor (`HOUR-SEQUENCE.tenv`), writes their `sensors.toml` entries and the label CSV, and
returns the plant.  The demo then stores the files with `teiten central import`, the
receiver's own checks.  Sources are drawn only from the ranges of the bundled delegation
sample (`central/data/rir/`), so every generated source has a region.

Planted (and checked by tests/unit/test_demo_fleet.py):
- services (packets per sensor-hour, a 7-day wave of +-10 % and +-5 % noise):
  23/tcp 3000, 22/tcp 2000, 445/tcp 1500, 80/tcp 1100, 8080/tcp 800, 3389/tcp 600,
  443/tcp 420, 53/udp 300, 5555/tcp 250, icmp type 8 200; 443/tcp surges x5 from
  2025-03-04 (`SURGE_SERVICE`), which takes it from 7th in 2024Q4 to 5th and pushes
  8080/tcp out of the top 5; 23/tcp is the flat control;
- regions (new sources an hour, each source active for a cycled lifetime, 1 to 48 h):
  CN 3.0, US 2.5, RU 2.0, NL 1.5, DE 1.25, BR 1.0, KR 0.9, VN 0.75, GB 0.6, JP 0.5,
  IN 0.5, TW 0.5, FR 0.4; VN's rate is x4 from 2025-01-20 (`SURGE_REGION`): it enters
  the top 5, DE leaves;
- a labelled population, `asus-aicloud`: `LABEL_SIZE` TW addresses identified on
  2025-02-10 (00:00 UTC), each first seen `i % 7` hours after that and active for
  -24 log2(1 - (i + 0.5) / N) hours (a half-life of 24 h), plus `LABEL_UNSEEN` entries
  never seen; the pool of other sources never uses a labelled address;
- osaka-02 misses 6 hours on 2025-02-20 (a sequence gap), so the report has a missing
  data note; every day still has data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.regions import RegionTable, parse_delegated
from central.rollup import quarter_bounds
from wire.envelope import compress_summary, seal_payload
from wire.keys import public_key_text
from wire.summary import PortRow, SourceRow, Summary, encode_summary

RIR_SAMPLE: Final = Path(__file__).with_name("data") / "rir"
SENSORS: Final = ("tokyo-01", "osaka-02", "fukuoka-03")
QUARTERS: Final = ("2024Q4", "2025Q1")
REPORT_QUARTER: Final = "2025Q1"
HOUR: Final = 3600
US: Final = 1_000_000
SERVICES: Final = {(6, 23): 3000, (6, 22): 2000, (6, 445): 1500, (6, 80): 1100,
                   (6, 8080): 800, (6, 3389): 600, (6, 443): 420, (17, 53): 300,
                   (6, 5555): 250, (1, 8): 200}
SURGE_SERVICE: Final = ((6, 443), "2025-03-04", 5.0)
FLAT_SERVICE: Final = (6, 23)
REGION_RATES: Final = {"CN": 3.0, "US": 2.5, "RU": 2.0, "NL": 1.5, "DE": 1.25, "BR": 1.0,
                       "KR": 0.9, "VN": 0.75, "GB": 0.6, "JP": 0.5, "IN": 0.5, "TW": 0.5,
                       "FR": 0.4}
SURGE_REGION: Final = ("VN", "2025-01-20", 4.0)
LIFETIMES_H: Final = (1, 1, 2, 3, 4, 6, 8, 12, 18, 24, 36, 48)
BACKSCATTER: Final = (6, 40000, 300, 290)  # proto, port, packets, of which backscatter
LABEL: Final = "asus-aicloud"
LABEL_DATE: Final = "2025-02-10"
LABEL_SIZE: Final = 400
LABEL_UNSEEN: Final = 40
LABEL_HALF_LIFE_H: Final = 24.0
LABEL_BASE: Final = "1.160.0.77"  # TW (HiNet); the pool never uses an address ending .77
GAP: Final = ("osaka-02", "2025-02-20T06:00", 6)


def _ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


@dataclass(frozen=True, slots=True)
class LabelPlant:
    address: bytes
    identified_us: int
    first_us: int
    last_us: int


@dataclass
class Plant:
    summaries: int = 0
    labels: list[LabelPlant] = field(default_factory=list)
    unseen: list[bytes] = field(default_factory=list)
    surge_service_day: int = _ts(SURGE_SERVICE[1]) // 86400
    surge_region_day: int = _ts(SURGE_REGION[1]) // 86400
    keys: dict[str, str] = field(default_factory=dict)  # sensor -> public key text


def _ranges(table: RegionTable) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for fam, start, end, cc, _reg in table.rows():
        if fam == 4:
            out.setdefault(cc, []).append((start, end))
    return out


def region_table() -> RegionTable:
    recs = []
    for p in sorted(RIR_SAMPLE.iterdir()):
        recs += parse_delegated(p.read_text(encoding="utf-8").splitlines(), where=p.name)
    return RegionTable.build(recs)


def label_plant() -> tuple[list[LabelPlant], list[bytes]]:
    ident = _ts(LABEL_DATE) * US
    base = int.from_bytes(bytes(int(x) for x in LABEL_BASE.split(".")), "big")
    seen = []
    for i in range(LABEL_SIZE):
        life_h = -LABEL_HALF_LIFE_H * math.log2(1 - (i + 0.5) / LABEL_SIZE)
        first = ident + (i % 7) * HOUR * US + 1_000
        seen.append(LabelPlant((base + 256 * i).to_bytes(4, "big"), ident, first,
                               first + int(life_h * HOUR * US)))
    unseen = [(base + 256 * (LABEL_SIZE + i)).to_bytes(4, "big") for i in range(LABEL_UNSEEN)]
    return seen, unseen


@dataclass(slots=True)
class _Source:
    address: bytes
    start_us: int
    end_us: int
    packets: int
    fingerprints: int
    n: int  # its number, which spreads it over the sensors


def generate(seed: int = 2025) -> Iterator[Summary]:
    """Every summary of the fleet, in hour order (deterministic)."""
    rnd = random.Random(seed)
    ranges = _ranges(region_table())
    lo, _ = quarter_bounds(QUARTERS[0])
    _, hi = quarter_bounds(QUARTERS[-1])
    svc_key, svc_day, svc_x = SURGE_SERVICE
    svc_from = _ts(svc_day)
    reg_cc, reg_day, reg_x = SURGE_REGION
    reg_from = _ts(reg_day)
    gap_sid, gap_at, gap_n = GAP
    gap_lo = _ts(gap_at)
    labelled, _ = label_plant()
    carry = dict.fromkeys(REGION_RATES, 0.0)
    active: list[_Source] = []
    count = 0
    fps = (1, 0, 2, 0, 0, 4, 1, 0)
    pending_labels = sorted(labelled, key=lambda p: p.first_us)
    for hour in range(lo, hi, HOUR):
        h_us, e_us = hour * US, (hour + HOUR) * US
        for cc, rate in REGION_RATES.items():
            carry[cc] += rate * (reg_x if cc == reg_cc and hour >= reg_from else 1.0)
            while carry[cc] >= 1.0:
                carry[cc] -= 1.0
                start, end = rnd.choice(ranges[cc])
                a = rnd.randint(start, end)
                if a & 0xFF == 77:
                    a ^= 1
                life = LIFETIMES_H[count % len(LIFETIMES_H)]
                t0 = h_us + rnd.randrange(HOUR * US)
                active.append(_Source(a.to_bytes(4, "big"), t0, t0 + life * HOUR * US,
                                      rnd.randint(10, 40), fps[count % len(fps)], count))
                count += 1
        while pending_labels and pending_labels[0].first_us < e_us:
            p = pending_labels.pop(0)
            active.append(_Source(p.address, p.first_us, p.last_us, 5, 0, count))
            count += 1
        rows: dict[str, list[SourceRow]] = {sid: [] for sid in SENSORS}
        keep = []
        hidx = hour // HOUR
        for s in active:
            if s.start_us >= e_us:
                keep.append(s)
                continue
            sid = SENSORS[(s.n + hidx) % len(SENSORS)]
            first, last = max(s.start_us, h_us), min(s.end_us, e_us - 1)
            rows[sid].append(SourceRow(s.address, s.packets, s.packets * 60, first, last,
                                       1 + s.n % 3, 1 + s.n % 5, 40 + s.n % 20,
                                       s.fingerprints))
            if s.end_us >= e_us:
                keep.append(s)
        active = keep
        day = hour // 86400
        wave = 1.0 + 0.1 * math.sin(2 * math.pi * day / 7)
        for sid in SENSORS:
            if sid == gap_sid and gap_lo <= hour < gap_lo + gap_n * HOUR:
                continue
            ports = []
            for (proto, port), base in SERVICES.items():
                x = svc_x if (proto, port) == svc_key and hour >= svc_from else 1.0
                n = round(base * x * wave * (1 + rnd.uniform(-0.05, 0.05)))
                ports.append(PortRow(proto, port, n, n * 60, 0, max(1, n // 30), False))
            bp, bport, bn, bs = BACKSCATTER
            ports.append(PortRow(bp, bport, bn, bn * 60, bs, 20, False))
            ports.sort(key=lambda r: (r.proto, r.port))
            srows = tuple(rows[sid])  # encode_summary sorts them
            fp: dict[str, int] = {}
            for r in srows:
                for name, bit in (("mirai", 1), ("zmap", 2), ("masscan", 4)):
                    if r.fingerprints & bit:
                        fp[name] = fp.get(name, 0) + r.packets
            packets = sum(r.packets for r in ports)
            yield Summary(
                sensor_id=sid, hour_start=hour, bucket_seconds=HOUR,
                darknet=("192.0.2.0/24",), packets=packets, bytes=packets * 60, fragments=0,
                sources_distinct=len(srows), sources_distinct_estimated=False,
                sources_overflow=0, destinations_overflow=0, ports=tuple(ports),
                icmp_codes=(), sources=srows, destinations=(), tcp_flags=(), ttl=(),
                sizes=(), fingerprints=fp, backscatter={"tcp_synack": bs}, malformed={},
                health={"partial": False, "clock": {"synchronized": True}},
            )


def write_fleet(out: Path, *, seed: int = 2025) -> Plant:
    """Seal the fleet into `out/<sensor>/*.tenv`, plus `out/sensors.toml` (the fleet's
    entries) and `out/<LABEL>.csv`; returns the plant."""
    plant = Plant()
    keys = {sid: Ed25519PrivateKey.from_private_bytes(
        random.Random(f"{seed} {sid}").randbytes(32)) for sid in SENSORS}
    seq = dict.fromkeys(SENSORS, 1 << 32)
    for sid in SENSORS:
        (out / sid).mkdir(parents=True, exist_ok=True)
        plant.keys[sid] = public_key_text(keys[sid].public_key())
    gap_sid, gap_at, gap_n = GAP
    for s in generate(seed):
        seq[s.sensor_id] += 1
        if s.sensor_id == gap_sid and s.hour_start == _ts(gap_at) + gap_n * HOUR:
            seq[s.sensor_id] += gap_n  # the missing hours were sealed and lost
        env = seal_payload(compress_summary(encode_summary(s), level=3),
                           sensor_id=s.sensor_id, sequence=seq[s.sensor_id],
                           hour_start=s.hour_start,
                           created_us=(s.hour_start + HOUR) * US + 5 * US, key=keys[s.sensor_id])
        (out / s.sensor_id / f"{s.hour_start:016x}-{seq[s.sensor_id]:016x}.tenv"
         ).write_bytes(env)
        plant.summaries += 1
    (out / "sensors.toml").write_text("".join(
        f'[sensors.{sid}]\npublic_key = "{k}"\nnote = "generated demo fleet"\n\n'
        for sid, k in plant.keys.items()))
    plant.labels, plant.unseen = label_plant()
    with (out / f"{LABEL}.csv").open("w", encoding="utf-8") as f:
        f.write("address,label,date\n")
        for a in [p.address for p in plant.labels] + plant.unseen:
            f.write(f"{'.'.join(str(b) for b in a)},{LABEL},{LABEL_DATE}\n")
    return plant


if __name__ == "__main__":  # `python -m central.demo_fleet OUT`: what `make demo` runs
    import sys
    import time

    t0 = time.monotonic()
    p = write_fleet(Path(sys.argv[1]))
    print(f"{p.summaries} envelopes of {len(SENSORS)} sensors in {sys.argv[1]} "
          f"({time.monotonic() - t0:.1f} s)")
