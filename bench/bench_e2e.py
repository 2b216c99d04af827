"""End-to-end uplink throughput: envelopes per second through Mosquitto and the receiver.

Real parts on loopback: a mutual-TLS Mosquitto, `teiten central receive` as a process
(SQLite WAL, synchronous=FULL, one transaction per envelope) and N sensors running the
real paho uplink in threads.  The clock starts when the uplinks start and stops when every
envelope is committed *and* acknowledged end to end (every spool empty).

    .venv/bin/python -m bench.bench_e2e [--sensors 3] [--envelopes 300] [--in-flight 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "privileged"))

from mqtt_fixtures import Broker, Central, Pki, SensorSim, wait_for  # noqa: E402

from central.ca import init_ca  # noqa: E402


def run(sensors: int, envelopes: int, in_flight: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory(prefix="teiten-bench-") as tmp:
        root = Path(tmp)
        files = init_ca(root / "ca")
        (root / "boards-pki").mkdir()
        pki = Pki(files, root / "boards-pki")
        broker = Broker(root / "broker", pki)
        broker.start()
        central = Central(root / "central", pki, broker)
        boards = [SensorSim(root / "boards", f"bench-{i:02d}", pki) for i in range(sensors)]
        try:
            central.enroll(*boards)
            central.start()
            for b in boards:
                b.fill(envelopes)
            size = sum(e.size for b in boards for e in b.spool.entries()) / (sensors * envelopes)
            t0 = time.perf_counter()
            for b in boards:
                b.start(broker, max_in_flight=in_flight, ack_timeout_s=30.0)
            wait_for(lambda: all(b.pending() == 0 for b in boards), 600, "spools to drain", 0.01)
            dt = time.perf_counter() - t0
            total = central.count()
        finally:
            for b in boards:
                b.stop()
            central.stop()
            broker.stop()
    n = sensors * envelopes
    assert total == n, f"stored {total} of {n}"
    return {
        "sensors": sensors,
        "envelopes": n,
        "in_flight": in_flight,
        "envelope_bytes_mean": round(size),
        "seconds": round(dt, 3),
        "envelopes_per_s": round(n / dt, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=3)
    ap.add_argument("--envelopes", type=int, default=300, help="per sensor")
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = run(a.sensors, a.envelopes, a.in_flight)
    if a.json:
        print(json.dumps(r))
    else:
        print(
            f"e2e: {r['envelopes']} envelopes ({r['envelope_bytes_mean']} B) from "
            f"{r['sensors']} sensors, window {r['in_flight']}: {r['seconds']} s, "
            f"{r['envelopes_per_s']} envelopes/s (stored and acknowledged)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
