"""`make demo`: the full path on one machine, with real parts.

Replays `tests/data/sample.pcap` into signed envelopes in a spool, starts Mosquitto with
mutual TLS (and WebSockets-TLS) on free loopback ports, runs the receiver and the uplink
until the spool is empty, and prints what the central database holds and where every
file is.  Everything lands in `demo-out/` (removed by `make clean`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from central.ca import init_ca, issue_sensor
from central.cli import print_overview
from central.config import ReceiverConfig, acl_text, render_mosquitto_conf
from central.store import Store

REPO = Path(__file__).resolve().parents[1]
SENSOR_ID = "demo-01"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not open port {port}")


def replay_into_spool(pcap: Path, key: Path, spool: Path, sensor_id: str) -> int:
    """The lead's `teiten replay`: one call, summaries sealed into the spool."""
    from sensor.cli import main as teiten

    return teiten(
        ["replay", str(pcap), "--key", str(key), "--spool", str(spool), "--sensor-id", sensor_id]
    )


def print_top(st: Store, top: int = 5) -> None:
    """Sum the stored hours and print the most-probed services and the busiest sources."""
    from collections import Counter

    from sensor.summary import address_text, decode_summary, proto_name
    from uplink.envelope import DEFAULT_MAX_SUMMARY_BYTES, decompress_capped, parse_envelope

    ports: Counter[tuple[int, int | None]] = Counter()
    sources: Counter[bytes] = Counter()
    packets = 0
    for row in st.summaries():
        data = st.envelope(row.sensor_id, row.sequence)
        if data is None:
            continue
        env = parse_envelope(data)  # verified on receipt; read back from our own store
        summary = decode_summary(decompress_capped(env.payload, DEFAULT_MAX_SUMMARY_BYTES))
        packets += summary.packets
        for p in summary.ports:
            ports[(p.proto, p.port)] += p.packets - p.backscatter
        for r in summary.sources:
            sources[r.address] += r.packets
    print(f"   {packets:,} packets in {len(st.summaries())} hours")
    print("   top services (backscatter excluded):")
    for (proto, port), n in ports.most_common(top):
        print(f"     {proto_name(proto)!s:>7}/{'-' if port is None else port:<6} {n:>8,} packets")
    print("   top sources:")
    for address, n in sources.most_common(top):
        print(f"     {address_text(address):>39} {n:>8,} packets")


def write_demo_report(db: Path, out: Path) -> Path | None:
    """Import the sample RIR files, roll up and write the report for the sample's quarter."""
    from datetime import UTC, datetime

    from sensor.cli import main as teiten

    with Store(db) as st:
        hours = [row.hour_start for row in st.summaries()]
    if not hours:
        print("   no summaries stored: no report", file=sys.stderr)
        return None
    first = datetime.fromtimestamp(min(hours), UTC)
    quarter = f"{first.year}Q{(first.month - 1) // 3 + 1}"
    rir = sorted(str(p) for p in (REPO / "tests" / "data" / "rir").iterdir())
    if teiten(["central", "regions", "import", "--db", str(db), *rir]) != 0:
        return None
    if teiten(["central", "report", "--db", str(db), "--quarter", quarter, "--out", str(out)]):
        return None
    return out


def main(out: Path = Path("demo-out")) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        print("demo: mosquitto is not installed; run `make install` as root", file=sys.stderr)
        return 2
    if out.exists():
        shutil.rmtree(out)
    board, central = out / "board", out / "central"
    board.mkdir(parents=True)
    central.mkdir(parents=True)

    print("1. central CA, broker and receiver certificates")
    ca = init_ca(central / "ca", hosts=["localhost", "127.0.0.1"])
    print("2. board: signing key, TLS key and a CSR; central signs the CSR")
    from uplink.certs import make_csr
    from uplink.keys import generate_key, public_key_text

    signing = generate_key(board / "signing.key")
    (board / "tls.crt").write_bytes(
        issue_sensor(ca.dir, SENSOR_ID, make_csr(board / "tls.key", SENSOR_ID))
    )
    (central / "sensors.toml").write_text(
        f'[sensors.{SENSOR_ID}]\npublic_key = "{public_key_text(signing.public_key())}"\n'
    )

    print("3. replay tests/data/sample.pcap into signed envelopes in the spool")
    spool_dir = board / "spool"
    rc = replay_into_spool(
        REPO / "tests" / "data" / "sample.pcap", board / "signing.key", spool_dir, SENSOR_ID
    )
    if rc != 0:
        print(f"demo: replay failed ({rc})", file=sys.stderr)
        return rc
    from sensor.spool import Spool

    spool = Spool(spool_dir)
    n = len(spool.entries())
    print(f"   {n} envelopes spooled")

    print("4. mosquitto with mutual TLS on free loopback ports")
    tls_port, ws_port = _free_port(), _free_port()
    (central / "acl").write_text(acl_text())
    (central / "mosquitto-data").mkdir()
    conf = central / "mosquitto.conf"
    conf.write_text(
        render_mosquitto_conf(
            data_dir=(central / "mosquitto-data").resolve(),
            acl_file=(central / "acl").resolve(),
            cafile=ca.ca_crt.resolve(),
            certfile=ca.server_crt.resolve(),
            keyfile=ca.server_key.resolve(),
            tls_port=tls_port,
            ws_port=ws_port,
            bind="127.0.0.1",
            extra="user root" if os.geteuid() == 0 else "",
        )
    )
    with (central / "mosquitto.log").open("wb") as logf:
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=logf, stderr=logf)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        _wait_port(tls_port)
        print(f"   TLS on 127.0.0.1:{tls_port}, WebSockets-TLS on 127.0.0.1:{ws_port}")

        print("5. receiver and uplink")
        from uplink.config import UplinkConfig
        from uplink.mqtt import MqttUplink
        from uplink.receiver import run_forever

        rcfg = ReceiverConfig(
            host="127.0.0.1",
            port=tls_port,
            database=central / "central.db",
            sensors=central / "sensors.toml",
            ca=ca.ca_crt,
            cert=ca.receiver_crt,
            key=ca.receiver_key,
        )
        threads.append(threading.Thread(target=run_forever, args=(rcfg, stop), daemon=True))
        ucfg = UplinkConfig(
            sensor_id=SENSOR_ID,
            spool=spool_dir,
            host="127.0.0.1",
            port=tls_port,
            ws_port=ws_port,
            ca=ca.ca_crt,
            cert=board / "tls.crt",
            key=board / "tls.key",
            ack_timeout_s=10.0,
            backoff_min_s=0.2,
            backoff_max_s=2.0,
            health_interval_s=5.0,
        )
        up = MqttUplink(ucfg, spool, software_version="demo", spool_poll_s=0.2)
        up_stop = threading.Event()
        up_thread = threading.Thread(target=up.run, args=(up_stop,), daemon=True)
        threads.append(up_thread)
        for t in threads:
            t.start()
        end = time.monotonic() + 60
        while spool.entries() and time.monotonic() < end:
            time.sleep(0.1)
        left = len(spool.entries())
        print(f"   spool now holds {left} envelopes")
        up_stop.set()  # a clean stop publishes the retained `offline` status
        up_thread.join(timeout=5)
        time.sleep(0.5)  # let the status and health messages land
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=10)

    print("6. what the central database holds")
    with Store(central / "central.db") as st:
        print_overview(st.overview())
    print("7. top ports and sources in what central stored (verified summaries)")
    with Store(central / "central.db") as st:
        print_top(st)
    print("8. the quarterly report (regions from the bundled sample RIR files)")
    report_dir = write_demo_report(central / "central.db", out / "report")
    print(f"\nfiles: {out}/board (spool, keys, cert), {out}/central (CA, db, broker config/log)")
    if report_dir is not None:
        print(f"report: {report_dir / 'report.html'} (also report.md and the PNG figures)")
    print(f"again: teiten central db --db {central / 'central.db'} [--json]")
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
