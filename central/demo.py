"""`make demo`: the full path on one machine, with real parts, then a real quarter.

Replays `tests/data/sample.pcap` into signed envelopes in a spool, starts Mosquitto with
mutual TLS (and WebSockets-TLS) on free loopback ports, runs the receiver and the uplink
until the spool is empty, and prints what the central database holds.  Then it stores a
generated fleet (`central/demo_fleet.py`: 3 sensors over 2024Q4 and 2025Q1, a service
and a region that surge on known days, a labelled population that decays with a 24 h
half-life) with `teiten central import`, imports the bundled delegation sample
(`central/data/rir/`) and the label CSV, and writes the 2025Q1 report.  The quarter is
fixed, not today's.  Everything lands in `demo-out/` (removed by `make clean`).

The board's side runs as the board runs it, through `teiten` commands in their own
processes (`keygen`, `csr`, `replay`, `spool list`, `uplink`): the central site's code never
imports the board's (the import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
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
from central.cli.site import print_overview
from central.config import ReceiverConfig, acl_text, render_mosquitto_conf
from central.receiver import run_forever
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


def board(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a `teiten` command as the board runs it, in its own process."""
    return subprocess.run([sys.executable, "-m", "sensor.cli", *args], cwd=REPO, text=True,
                          capture_output=capture, check=False)


def spooled(spool: Path) -> int:
    """How many envelopes wait in the board's spool (`teiten spool list --json`)."""
    r = board("spool", "list", "--spool", str(spool), "--json", capture=True)
    return len(json.loads(r.stdout)["entries"]) if r.returncode == 0 else -1


def print_top(st: Store, top: int = 5) -> None:
    """Sum the stored hours and print the most-probed services and the busiest sources."""
    from collections import Counter

    from wire.envelope import DEFAULT_MAX_SUMMARY_BYTES, decompress_capped, parse_envelope
    from wire.summary import address_text, decode_summary, proto_name

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


def _teiten(argv: list[str]) -> int:
    """A central command in this process (the central site's own CLI)."""
    from central.cli import register

    parser = argparse.ArgumentParser(prog="teiten")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc: int = args.handler(args)
    return rc


def write_demo_report(db: Path, keys: Path, fleet: Path, out: Path) -> Path | None:
    """Store the generated fleet (`teiten central import`), import the bundled delegation
    sample and the label CSV, and write the report of the fleet's second quarter."""
    from central import demo_fleet

    extra = (fleet / "sensors.toml").read_text()
    with keys.open("a") as f:
        f.write("\n" + extra)
    print(f"   teiten central import {fleet}/{{{','.join(demo_fleet.SENSORS)}}}")
    if _teiten(["central", "import", *(str(fleet / s) for s in demo_fleet.SENSORS),
                "--db", str(db), "--keys", str(keys)]) != 0:
        return None
    rir = sorted(str(p) for p in demo_fleet.RIR_SAMPLE.iterdir())
    print("   teiten central regions import central/data/rir/*")
    with contextlib.redirect_stdout(io.StringIO()):
        if _teiten(["central", "regions", "import", "--db", str(db), *rir]) != 0:
            return None
    csv_file = fleet / f"{demo_fleet.LABEL}.csv"
    print(f"   teiten central labels import {csv_file} --label {demo_fleet.LABEL}")
    if _teiten(["central", "labels", "import", str(csv_file), "--label", demo_fleet.LABEL,
                "--db", str(db)]) != 0:
        return None
    print(f"   teiten central report --quarter {demo_fleet.REPORT_QUARTER}")
    with contextlib.redirect_stdout(io.StringIO()):
        if _teiten(["central", "report", "--db", str(db), "--quarter",
                    demo_fleet.REPORT_QUARTER, "--out", str(out)]):
            return None
    return out


def print_report_summary(report_dir: Path) -> None:
    """The planted facts as the report states them (from its report.json)."""
    data = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    days = data["days"]
    full = all(sum(v[i] for v in data["service_daily"].values()) > 0 for i in range(len(days)))
    share = data["unattributed_packets"] / (data["region_packets"] or 1)
    print(f"   Figure 1: {len(days)} days, a value for every day: {full}")
    print(f"   Table 2: {100 * share:.1f} % of source packets unattributed (ZZ)")
    for c in data["changes"]:
        if c["kind"] == "surge" and c["metric"] == "packets":
            sg = c["surge"]
            day = time.strftime("%Y-%m-%d", time.gmtime(sg["start_day"] * 86400))
            print(f"   surge: {c['key']} from {day}, {sg['ratio']:.1f}x its baseline")
        elif c["kind"] in ("entered", "left"):
            print(f"   {c['kind']} the top 5: {c['key']} (now {c['rank']}, "
                  f"before {c['prev_rank']})")
    for lb in data["labels"]:
        for lt in lb["lifetimes"]:
            shares = ", ".join("-" if x is None else f"{100 * x:.1f} %" for x in lt["shares"])
            print(f"   label {lb['label']} ({lt['basis']}): {lt['population']} addresses, "
                  f"gone after 24/48/168 h: {shares}")


def main(out: Path = Path("demo-out")) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        print("demo: mosquitto is not installed; run `make install` as root", file=sys.stderr)
        return 2
    if out.exists():
        shutil.rmtree(out)
    bdir, central = out / "board", out / "central"
    bdir.mkdir(parents=True)
    central.mkdir(parents=True)

    # the generated fleet is made meanwhile, in its own process (CPU while the path waits)
    fleet_dir = central / "fleet"
    fleet_log = (out / "fleet.log").open("w")
    fleet = subprocess.Popen([sys.executable, "-m", "central.demo_fleet", str(fleet_dir)],
                             cwd=REPO, stdout=fleet_log, stderr=subprocess.STDOUT)
    print("1. central CA, broker and receiver certificates")
    ca = init_ca(central / "ca", hosts=["localhost", "127.0.0.1"])
    print("2. board: signing key, TLS key and a CSR; central signs the CSR")
    keygen = board("keygen", "--key", str(bdir / "signing.key"), "--json", capture=True)
    csr = board("csr", "--key", str(bdir / "tls.key"), "--sensor-id", SENSOR_ID, capture=True)
    if keygen.returncode or csr.returncode:
        print(f"demo: key generation failed: {keygen.stderr}{csr.stderr}", file=sys.stderr)
        return 2
    (bdir / "tls.crt").write_bytes(issue_sensor(ca.dir, SENSOR_ID, csr.stdout.encode()))
    public_key = json.loads(keygen.stdout)["public_key"]
    (central / "sensors.toml").write_text(
        f'[sensors.{SENSOR_ID}]\npublic_key = "{public_key}"\n'
    )

    print("3. replay tests/data/sample.pcap into signed envelopes in the spool")
    spool_dir = bdir / "spool"
    rc = board("replay", str(REPO / "tests" / "data" / "sample.pcap"), "--key",
               str(bdir / "signing.key"), "--spool", str(spool_dir), "--sensor-id",
               SENSOR_ID).returncode
    if rc != 0:
        print(f"demo: replay failed ({rc})", file=sys.stderr)
        return rc
    print(f"   {spooled(spool_dir)} envelopes spooled")

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

        print("5. receiver, and the board's uplink (`teiten uplink`)")

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
        for t in threads:
            t.start()
        (bdir / "sensor.toml").write_text(
            f'[sensor]\nid = "{SENSOR_ID}"\n\n[spool]\npath = "spool"\n\n'
            f'[uplink]\nhost = "127.0.0.1"\nport = {tls_port}\nws_port = {ws_port}\n'
            f'ca = "{ca.ca_crt.resolve()}"\ncert = "tls.crt"\nkey = "tls.key"\n'
            "ack_timeout_s = 10.0\nbackoff_min_s = 0.2\nbackoff_max_s = 2.0\n"
            "health_interval_s = 5.0\n")
        with (bdir / "uplink.log").open("wb") as ulog:
            uplink = subprocess.Popen(
                [sys.executable, "-m", "sensor.cli", "uplink", "--config",
                 str(bdir / "sensor.toml")], cwd=REPO, stdout=ulog, stderr=ulog)
        end = time.monotonic() + 60
        left = spooled(spool_dir)
        while left != 0 and time.monotonic() < end:
            time.sleep(0.3)
            left = spooled(spool_dir)
        print(f"   spool now holds {left} envelopes")
        uplink.send_signal(signal.SIGTERM)  # a clean stop publishes the retained `offline`
        uplink.wait(timeout=10)
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
    print("8. a generated fleet: 3 sensors, 2024Q4 and 2025Q1, planted surges and a label")
    if fleet.wait() != 0:
        fleet_log.close()
        print(f"demo: generating the fleet failed; see {out / 'fleet.log'}", file=sys.stderr)
        return 2
    fleet_log.close()
    print("   " + (out / "fleet.log").read_text().strip())
    report_dir = write_demo_report(central / "central.db", central / "sensors.toml",
                                   fleet_dir, out / "report")
    if report_dir is not None:
        print_report_summary(report_dir)
    print(f"\nfiles: {out}/board (spool, keys, cert), {out}/central (CA, db, broker config/log)")
    if report_dir is not None:
        print(f"report: {report_dir / 'report.html'} (also report.md and the PNG figures)")
    print(f"again: teiten central db --db {central / 'central.db'} [--json]")
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
