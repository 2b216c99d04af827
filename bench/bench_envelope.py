"""Envelope seal/verify rate and size for a busy /24 hour and a /16 hour at the source cap.

Summaries are real: packet records go through the real aggregator (`HourAggregator`) and
the real summary encoder, so the sizes are what a sensor would seal.  Records are built
directly (no pcap decode), which is what makes 20 million packets affordable here.

    .venv/bin/python -m bench.bench_envelope            # /24 and /16 (20 M packets, minutes)
    .venv/bin/python -m bench.bench_envelope --quick    # /24 and a 2 M-packet /16
    .venv/bin/python -m bench.bench_envelope --json
    .venv/bin/python -m bench.bench_envelope --refusals # peak memory refusing 60 MiB inputs

The spool default (sensor/edges/spool.py, docs/spool.md) is derived from the /24 envelope size:
7 days x 24 envelopes, with a safety factor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from random import Random
from typing import Any

import msgpack
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sensor.core.aggregate import HourAggregator
from sensor.core.limits import Limits
from sensor.core.records import PROTO_TCP, PROTO_UDP, PacketRecord
from sensor.edges.spool import DEFAULT_SPOOL_BYTES
from wire.envelope import (
    DEFAULT_MAX_SUMMARY_BYTES,
    ZSTD_LEVEL,
    EnvelopeError,
    compress_summary,
    decompress_capped,
    parse_envelope,
    seal,
    seal_payload,
    verify_envelope,
)
from wire.keys import Keyring
from wire.summary import Summary, encode_summary

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


def _bench_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench").digest())


def refusal_cases(size: int) -> list[tuple[str, int, Callable[[], bytes]]]:
    """(case, max_summary_bytes, build the input) for inputs of about `size` bytes."""
    def garbage(n: int) -> bytes:
        return Random(1).randbytes(n)

    def fields(sensor_id: str, payload: bytes, version: int = 1) -> bytes:
        out: bytes = msgpack.packb(
            [version, sensor_id, 1, HOUR_START, 1, "zstd", payload, b"\0" * 64],
            use_bin_type=True,
        )
        return out

    body = size - 100
    return [
        ("random bytes", DEFAULT_MAX_SUMMARY_BYTES, lambda: garbage(size)),
        ("array32 declaring 60 M fixints", DEFAULT_MAX_SUMMARY_BYTES,
         lambda: b"\xdd" + struct.pack(">I", size - 5) + b"\x01" * (size - 5)),
        ("60 MiB sensor id", DEFAULT_MAX_SUMMARY_BYTES, lambda: fields("a" * body, b"")),
        ("8 fields, sensor not enrolled", DEFAULT_MAX_SUMMARY_BYTES,
         lambda: fields("stranger-01", garbage(body))),
        ("8 fields, version 2", DEFAULT_MAX_SUMMARY_BYTES,
         lambda: fields(SENSOR_ID, garbage(body), version=2)),
        ("8 fields, enrolled, payload over a 16 MiB cap", 16 << 20,
         lambda: fields(SENSOR_ID, garbage(body))),
        ("8 fields, enrolled, bad signature", DEFAULT_MAX_SUMMARY_BYTES,
         lambda: fields(SENSOR_ID, garbage(body))),
        ("signed, payload not zstd", DEFAULT_MAX_SUMMARY_BYTES,
         lambda: seal_payload(garbage(body), sensor_id=SENSOR_ID, sequence=1,
                              hour_start=HOUR_START, created_us=1, key=_bench_key())),
    ]


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def refusal_child(path: str, max_summary_bytes: int) -> None:
    """In a fresh process: read one input, verify it, print peak RSS over the RSS before."""
    keyring = Keyring.from_mapping({SENSOR_ID: _bench_key().public_key()})
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    before = _proc_status("VmRSS")
    with open(path, "rb") as fh:
        data = fh.read()
    t0 = time.perf_counter()
    try:
        verify_envelope(data, keyring, max_summary_bytes=max_summary_bytes)
        reason = "accepted"
    except EnvelopeError as exc:
        reason = exc.reason
    seconds = time.perf_counter() - t0
    print(json.dumps({"size": len(data), "peak": _proc_status("VmHWM") - before,
                      "reason": reason, "ms": round(seconds * 1000, 1)}))


def measure_refusals(size: int = 60 << 20) -> list[dict[str, Any]]:
    """Peak RSS (input included) of refusing each of `refusal_cases`, one process each."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "input.bin")
        for name, cap, build in refusal_cases(size):
            with open(path, "wb") as fh:
                fh.write(build())
            out = subprocess.run(
                [sys.executable, "-c", "import sys; from bench.bench_envelope import "
                 "refusal_child; refusal_child(sys.argv[1], int(sys.argv[2]))", path, str(cap)],
                capture_output=True, text=True, check=True,
            )
            row = json.loads(out.stdout)
            row["case"] = name
            row["x_input"] = round(row["peak"] / row["size"], 2)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 M packets for the /16")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--refusals", action="store_true",
                        help="only: peak memory of refusing 60 MiB inputs")
    args = parser.parse_args(argv)
    if args.refusals:
        rows = measure_refusals()
        if args.json:
            print(json.dumps({"refusals": rows}, indent=2))
            return 0
        for r in rows:
            print(f"{r['case']:48s} {r['reason']:18s} peak RSS {r['peak'] / 2**20:6.1f} MiB "
                  f"(x{r['x_input']:.2f} the input, input included), {r['ms']} ms")
        return 0
    key = _bench_key()
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
        summary = build_summary(progress=True, **params)
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
