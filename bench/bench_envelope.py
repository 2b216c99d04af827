"""Envelope seal/verify rate and size for a busy /24 hour and a /16 hour at the source cap.

Summaries are real: packet records go through the real aggregator (`HourAggregator`) and
the real summary encoder, so the sizes are what a sensor would seal.  Records are built
directly (no pcap decode), which is what makes 20 million packets affordable here.

    .venv/bin/python -m bench.bench_envelope            # /24 and /16 (20 M packets, minutes)
    .venv/bin/python -m bench.bench_envelope --quick    # /24 and a 2 M-packet /16
    .venv/bin/python -m bench.bench_envelope --json

The spool default (sensor/spool.py, docs/spool.md) is derived from the /24 envelope size:
7 days x 24 envelopes, with a safety factor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from random import Random
from typing import Any

import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sensor.aggregate import HourAggregator, Limits
from sensor.records import PROTO_TCP, PROTO_UDP, PacketRecord
from sensor.spool import DEFAULT_SPOOL_BYTES
from sensor.summary import Summary, encode_summary
from uplink.envelope import (
    DEFAULT_MAX_SUMMARY_BYTES,
    ZSTD_LEVEL,
    compress_summary,
    decompress_capped,
    parse_envelope,
    seal,
    verify_envelope,
)
from uplink.keys import Keyring

HOUR_START = 1_767_225_600
SENSOR_ID = "bench-01"
# Ports scanners hit most, weighted; the rest are uniform over 1-65535.
HOT_PORTS = (23, 22, 80, 443, 8080, 445, 3389, 5555, 2323, 81, 8443, 37215, 52869, 60001)


def build_summary(
    *, prefix: int, prefix_len: int, packets: int, sources: int, seed: int = 1,
    progress: bool = False,
) -> Summary:
    """One hour of synthetic darknet traffic through the real aggregator."""
    rnd = Random(seed)
    agg = HourAggregator(HOUR_START, limits=Limits())
    hosts = 1 << (32 - prefix_len)
    source_addrs = [rnd.getrandbits(32) | 0x01000000 for _ in range(sources)]
    start_us = HOUR_START * 1_000_000
    t0 = time.monotonic()
    for i in range(packets):
        # The first pass gives every source at least one packet; then heavy-tailed reuse.
        src = source_addrs[i] if i < sources else source_addrs[int(sources * rnd.random() ** 3)]
        if rnd.random() < 0.7:
            dport = HOT_PORTS[int(len(HOT_PORTS) * rnd.random() ** 2)]
        else:
            dport = rnd.randrange(1, 65536)
        proto = PROTO_TCP if rnd.random() < 0.85 else PROTO_UDP
        agg.add(
            PacketRecord(
                ts_us=start_us + i * 3_600_000_000 // packets,
                version=4,
                src=src,
                dst=prefix | rnd.randrange(hosts),
                proto=proto,
                ttl=rnd.choice((47, 50, 54, 113, 241, 242)),
                ip_len=40 if proto == PROTO_TCP else 60,
                ip_id=rnd.getrandbits(16),
                sport=rnd.randrange(1024, 65536),
                dport=dport,
                tcp_flags=0x02 if proto == PROTO_TCP else 0,
                tcp_window=rnd.choice((1024, 65535, 29200)),
            )
        )
        if progress and i and i % 1_000_000 == 0:
            rate = i / (time.monotonic() - t0)
            print(f"\r  aggregated {i:,} / {packets:,} packets ({rate:,.0f}/s)",
                  end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return agg.finish(sensor_id=SENSOR_ID, darknet=(f"{prefix >> 24}.x/{prefix_len}",))


def measure(name: str, summary: Summary, key: Ed25519PrivateKey, keyring: Keyring,
            min_seconds: float = 2.0) -> dict[str, Any]:
    raw = encode_summary(summary)
    envelope = b""
    n, t0 = 0, time.perf_counter()
    while True:
        envelope = seal(raw, sensor_id=SENSOR_ID, sequence=n, hour_start=HOUR_START,
                        created_us=0, key=key)
        n += 1
        if time.perf_counter() - t0 >= min_seconds and n >= 3:
            break
    seal_s = (time.perf_counter() - t0) / n
    m, t0 = 0, time.perf_counter()
    while True:
        verify_envelope(envelope, keyring)
        m += 1
        if time.perf_counter() - t0 >= min_seconds and m >= 3:
            break
    verify_s = (time.perf_counter() - t0) / m
    # The envelope's own share: parse, signature, capped decompression (no summary decode).
    k, t0 = 0, time.perf_counter()
    while True:
        env = parse_envelope(envelope)
        keyring.lookup(env.sensor_id).verify(env.signature, env.signed_bytes())
        decompress_capped(env.payload, DEFAULT_MAX_SUMMARY_BYTES)
        k += 1
        if time.perf_counter() - t0 >= min_seconds and k >= 3:
            break
    envelope_only_s = (time.perf_counter() - t0) / k
    levels = {lvl: len(compress_summary(raw, level=lvl)) for lvl in (3, 6, 9, 12, 19)}
    return {
        "case": name,
        "packets": summary.packets,
        "source_rows": len(summary.sources),
        "destination_rows": len(summary.destinations),
        "port_rows": len(summary.ports),
        "summary_bytes": len(raw),
        "envelope_bytes": len(envelope),
        "ratio": round(len(raw) / len(envelope), 2),
        "zstd_level": ZSTD_LEVEL,
        "compressed_bytes_by_level": levels,
        "seal_per_s": round(1 / seal_s, 2),
        "seal_ms": round(seal_s * 1000, 2),
        "verify_per_s": round(1 / verify_s, 2),
        "verify_ms": round(verify_s * 1000, 2),
        "verify_without_summary_decode_ms": round(envelope_only_s * 1000, 2),
        "zstd_window_bytes": zstandard.get_frame_parameters(
            parse_envelope(envelope).payload).window_size,
        "sha256": hashlib.sha256(envelope).hexdigest()[:16],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 M packets for the /16")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench").digest())
    keyring = Keyring.from_mapping({SENSOR_ID: key.public_key()})
    cases = [
        ("/24 hour: 100,000 packets, 20,000 sources",
         {"prefix": 0xC6336400, "prefix_len": 24, "packets": 100_000, "sources": 20_000}),
        (f"/16 hour: {'2,000,000' if args.quick else '20,000,000'} packets, sources at the cap",
         {"prefix": 0xC6120000, "prefix_len": 16,
          "packets": 2_000_000 if args.quick else 20_000_000, "sources": 300_000}),
    ]
    results = []
    for name, params in cases:
        print(f"{name}: aggregating...", file=sys.stderr)
        t0 = time.monotonic()
        summary = build_summary(progress=True, **params)  # type: ignore[arg-type]
        print(f"  built in {time.monotonic() - t0:.1f} s; measuring", file=sys.stderr)
        results.append(measure(name, summary, key, keyring))
    per_week = results[0]["envelope_bytes"] * 24 * 7
    derived = {
        "busy_24_week_bytes": per_week,
        "default_spool_bytes": DEFAULT_SPOOL_BYTES,
        "weeks_of_busy_24": round(DEFAULT_SPOOL_BYTES / per_week, 1),
        "hours_of_16_at_cap": round(DEFAULT_SPOOL_BYTES / results[1]["envelope_bytes"], 1),
    }
    if args.json:
        print(json.dumps({"results": results, "spool": derived}, indent=2))
        return 0
    for r in results:
        print(f"{r['case']}")
        print(f"  summary {r['summary_bytes']:,} B -> envelope {r['envelope_bytes']:,} B "
              f"(x{r['ratio']}, zstd level {r['zstd_level']}); rows: {r['source_rows']:,} "
              f"sources, {r['destination_rows']:,} destinations, {r['port_rows']:,} ports")
        print(f"  seal {r['seal_per_s']:,}/s ({r['seal_ms']} ms), "
              f"verify {r['verify_per_s']:,}/s ({r['verify_ms']} ms, of which "
              f"{r['verify_without_summary_decode_ms']} ms parse+signature+decompression; "
              "the rest is decode_summary)")
        print(f"  compressed size by zstd level: {r['compressed_bytes_by_level']}")
    print(f"spool: a busy /24 week is {per_week:,} B; default bound {DEFAULT_SPOOL_BYTES:,} B "
          f"= {derived['weeks_of_busy_24']} such weeks, "
          f"or {derived['hours_of_16_at_cap']} hours of a /16 at the cap")
    return 0


if __name__ == "__main__":
    sys.exit(main())
