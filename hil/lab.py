"""The lab: the test host's side of every HIL run, whatever the board is.

    scanner ns ── capture port ── [board: the target] ── uplink ── central (broker, receiver)

- `scanner` (a namespace of this run, `thil-<n>-scan`) holds the test host's end of the
  capture link: a veth (netns target, ssh stand-in), a tap (qemu) or a real NIC cabled to
  a lab Pi (`--capture-port`, moved into the namespace for the run; the kernel hands it
  back when the namespace goes).  It sends the known traffic (hil/send.py, tcpreplay) and
  captures everything the board sends back (the silence checks).
- `central` runs a real Mosquitto (mutual TLS) and `teiten central receive` writing a real
  SQLite database, in a namespace of this run or (lab Pi) in the test host's own.
- PKI: a CA, the board's signing key, TLS key and certificate, made here and deployed
  (process mode) or issued from the CSR the board wrote to its card (the SD image).

`Board` is what tests use: a target (hil/targets) and this lab, behind one set of methods.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.targets.base import REPO, Target

PY = sys.executable
DARK4 = "198.51.100.0/24"
DARK6 = "2001:db8:dead::/48"
SENSOR_V4, SCANNER_V4 = "192.0.2.2", "192.0.2.1"
SENSOR_V6, SCANNER_V6 = "2001:db8:1::2", "2001:db8:1::1"
CENTRAL_V4, SENSOR_UP_V4 = "10.77.0.2", "10.77.0.1"
_counter = itertools.count()


def sh(*cmd: str, check: bool = True, timeout: float = 30,
       **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True,
                          timeout=timeout, **kw)


def wait_for(cond: Any, timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_id() -> str:
    return f"{os.getpid() % 10000}{next(_counter)}"


@dataclass
class StoredSummary:
    sequence: int
    hour_start: int
    summary: Any  # wire.summary.Summary


def host_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}


class Lab:
    """The scanner and central namespaces, the PKI and the central site of one run."""

    def __init__(self, *, central_in_scanner: bool = False, central_ns: bool = True,
                 broker_port: int = 8883) -> None:
        self.n = run_id()
        self.dir = Path(tempfile.mkdtemp(prefix="thil-"))
        os.chmod(self.dir, 0o755)
        self.scanner_ns = f"thil-{self.n}-scan"
        if central_in_scanner:
            self.central_ns: str | None = self.scanner_ns
        else:
            self.central_ns = f"thil-{self.n}-cent" if central_ns else None
        self.broker_port = broker_port
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.scanner_if = "sc0"
        self.scanner_mac = ""
        self.sensor_id = ""
        self.db = self.dir / "central" / "central.db"
        self.topology = "routed"
        self.extra_ns: list[str] = []  # namespaces a target made for the board

    # ------------------------------------------------------------------ namespaces
    def create(self) -> None:
        for name in {self.scanner_ns, self.central_ns} - {None}:
            assert name is not None
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")

    def in_ns(self, ns: str | None, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)

    def scan(self, *cmd: str, check: bool = True, timeout: float = 60,
             **kw: Any) -> subprocess.CompletedProcess[str]:
        return sh(*self.in_ns(self.scanner_ns, *cmd), check=check, timeout=timeout, **kw)

    def cent(self, *cmd: str, check: bool = True, timeout: float = 60,
             **kw: Any) -> subprocess.CompletedProcess[str]:
        return sh(*self.in_ns(self.central_ns, *cmd), check=check, timeout=timeout, **kw)

    def configure_scanner(self, topology: str, sensor_mac: str) -> None:
        """Addresses and routes of the scanner end of the capture link, per topology."""
        ns, dev = self.scanner_ns, self.scanner_if
        ip = ("ip", "-n", ns)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0",
           f"net.ipv6.conf.{dev}.accept_ra=0", f"net.ipv6.conf.{dev}.disable_ipv6=0")
        sh(*ip, "addr", "add", f"{SCANNER_V4}/30", "dev", dev)
        sh(*ip, "addr", "add", f"{SCANNER_V6}/64", "dev", dev, "nodad")
        sh(*ip, "link", "set", dev, "up")
        self.scanner_mac = json.loads(sh(*ip, "-j", "link", "show", dev).stdout)[0]["address"]
        if topology == "onlink":
            sh(*ip, "route", "add", DARK4, "dev", dev)
            sh(*ip, "-6", "route", "add", DARK6, "dev", dev)
        else:
            for addr in (SENSOR_V4, SENSOR_V6):
                sh(*ip, "neigh", "replace", addr, "lladdr", sensor_mac, "nud", "permanent",
                   "dev", dev)
            sh(*ip, "route", "add", DARK4, "via", SENSOR_V4)
            sh(*ip, "-6", "route", "add", DARK6, "via", SENSOR_V6)

    # ------------------------------------------------------------------ PKI
    def pki(self, sensor_id: str, central_host: str, *, make_board_keys: bool = True
            ) -> dict[str, bytes]:
        from central.ca import init_ca, issue_sensor
        from sensor.edges.certs import make_csr
        from sensor.edges.keys import generate_key
        from wire.keys import public_key_text

        self.sensor_id = sensor_id
        self.ca = init_ca(self.dir / "ca", hosts=["localhost", "127.0.0.1", central_host])
        secrets: dict[str, bytes] = {"ca": self.ca.ca_crt.read_bytes()}
        if make_board_keys:
            keys = self.dir / "board-secrets"
            keys.mkdir(mode=0o700)
            pub = generate_key(keys / "sensor.key").public_key()
            csr = make_csr(keys / "tls.key", sensor_id)
            secrets.update(key=(keys / "sensor.key").read_bytes(),
                           tls_key=(keys / "tls.key").read_bytes(),
                           cert=issue_sensor(self.ca.dir, sensor_id, csr))
            self.enrol(public_key_text(pub))
        return secrets

    def enrol(self, public_key: str) -> None:
        central = self.dir / "central"
        central.mkdir(exist_ok=True)
        self.sensors_toml = central / "sensors.toml"
        self.sensors_toml.write_text(f'[sensors]\n[sensors.{self.sensor_id}]\n'
                                     f'public_key = "{public_key}"\n')
        (central / "central.toml").write_text(
            f'[receiver]\nhost = "127.0.0.1"\nport = {self.broker_port}\n'
            f'ca = "{self.ca.ca_crt}"\ncert = "{self.ca.receiver_crt}"\n'
            f'key = "{self.ca.receiver_key}"\ndatabase = "{self.db}"\n'
            f'sensors = "{self.sensors_toml}"\nkeepalive_s = 5\n')

    def keyring(self) -> Any:
        from wire.keys import parse_keyring_toml

        return parse_keyring_toml(self.sensors_toml.read_bytes(), source="sensors.toml")

    # ------------------------------------------------------------------ central
    def start_broker(self) -> None:
        from central.config import acl_text, render_mosquitto_conf

        d = self.dir / "broker"
        (d / "data").mkdir(parents=True, exist_ok=True)
        (d / "acl").write_text(acl_text())
        conf = d / "mosquitto.conf"
        conf.write_text(render_mosquitto_conf(
            data_dir=d / "data", acl_file=d / "acl", cafile=self.ca.ca_crt,
            certfile=self.ca.server_crt, keyfile=self.ca.server_key,
            tls_port=self.broker_port, ws_port=self.broker_port + 1, bind="",
            extra="user root"))
        mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self._spawn("broker", self.in_ns(self.central_ns, mosq, "-c", str(conf)),
                    d / "mosquitto.log")
        wait_for(lambda: self._port_open(), 10, "mosquitto")

    def _port_open(self) -> bool:
        code = (f"import socket\ntry:\n socket.create_connection(('127.0.0.1', "
                f"{self.broker_port}), 0.3)\nexcept OSError:\n raise SystemExit(1)")
        return self.cent("python3", "-c", code, check=False).returncode == 0

    def kill_broker(self) -> None:
        self._kill("broker", signal.SIGKILL)

    def start_receiver(self) -> None:
        log = self.dir / "central" / "receiver.log"
        code = ("import sys\nfrom sensor.cli import main\nsys.exit(main(['central', "
                f"'receive', '-v', '--config', {str(self.dir / 'central' / 'central.toml')!r}]))")
        self._spawn("receiver", self.in_ns(self.central_ns, PY, "-c", code), log)
        wait_for(lambda: "connected (session" in log.read_text(errors="replace")
                 or self.procs["receiver"].poll() is not None, 20, "the receiver")
        if self.procs["receiver"].poll() is not None:
            raise RuntimeError("receiver exited:\n" + log.read_text()[-3000:])

    def _spawn(self, name: str, cmd: list[str], log: Path) -> None:
        with log.open("ab") as fh:
            self.procs[name] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                                cwd=REPO, env=host_env())

    def _kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def summaries(self) -> list[StoredSummary]:
        from central.store import Store
        from wire.envelope import decompress_capped, parse_envelope
        from wire.summary import decode_summary

        if not self.db.exists():
            return []
        out = []
        with Store(self.db) as st:
            for row in st.summaries(self.sensor_id):
                data = st.envelope(self.sensor_id, row.sequence)
                assert data is not None
                env = parse_envelope(data)
                out.append(StoredSummary(row.sequence, row.hour_start, decode_summary(
                    decompress_capped(env.payload, 1 << 24))))
        return sorted(out, key=lambda s: (s.hour_start, s.sequence))

    # ------------------------------------------------------------------ scanner
    def send(self, *args: str, timeout: float = 300) -> dict[str, Any]:
        r = self.scan(PY, str(REPO / "hil" / "send.py"), *args, cwd=REPO, env=host_env(),
                      timeout=timeout)
        return dict(json.loads(r.stdout))

    @contextlib.contextmanager
    def capture_in(self) -> Iterator[list[bytes]]:
        """Every frame the scanner *receives* on its capture port; the list fills on exit."""
        out = self.dir / f"scanner-in-{time.monotonic_ns()}.pcap"
        err = self.dir / "tcpdump.err"
        with err.open("wb") as fh:
            p = subprocess.Popen(self.in_ns(self.scanner_ns, "tcpdump", "-n", "-U", "-Q", "in",
                                            "-i", self.scanner_if, "-w", str(out)),
                                 stdout=subprocess.DEVNULL, stderr=fh)
        frames: list[bytes] = []
        try:
            wait_for(lambda: b"listening on" in err.read_bytes(), 10, "tcpdump")
            yield frames
            time.sleep(0.5)
        finally:
            p.send_signal(signal.SIGINT)
            p.wait(timeout=10)
            err.write_bytes(b"")
        from sensor.edges.pcap import open_file

        with open_file(out) as src:
            for batch in src.batches():
                frames.extend(f.data for f in batch)

    # ------------------------------------------------------------------ teardown
    def down(self) -> None:
        for name in list(self.procs):
            with contextlib.suppress(Exception):
                self._kill(name)
        for ns in [*self.extra_ns, *({self.scanner_ns, self.central_ns} - {None})]:
            assert ns is not None
            sh("ip", "netns", "del", ns, check=False)
        if os.environ.get("TEITEN_HIL_KEEP"):
            print(f"lab files kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def render_config(t: Target, sensor_id: str, topology: str, *, clock: bool = False,
                  **capture: str) -> str:
    """The board's sensor.toml for a test: paths on the board, the test bucket."""
    p = t.paths
    extra = "".join(f"{k} = {v}\n" for k, v in capture.items() if not k.startswith("spool_"))
    spool_extra = "".join(f"{k.removeprefix('spool_')} = {v}\n" for k, v in capture.items()
                          if k.startswith("spool_"))
    test = f"[test]\nbucket_seconds = {t.bucket_s}\n"
    if clock:
        test += f'clock_offset_file = "{p.clock}"\n'
    return (
        f'[sensor]\nid = "{sensor_id}"\ntopology = "{topology}"\nkey = "{p.key}"\n'
        f'[capture]\ninterface = "{p.interface}"\ndarknet = ["{DARK4}", "{DARK6}"]\n'
        f"timeout_ms = 100\nreopen_min_s = 0.2\nreopen_max_s = 1.0\n{extra}"
        f'[spool]\npath = "{p.spool}"\n{spool_extra}'
        f"[time]\nwait_for_sync_s = 0\nclose_grace_s = {t.grace_s}\nstep_threshold_s = 1.0\n"
        f'[uplink]\nhost = "{t.uplink_host}"\nport = {t.uplink_port}\nws_port = 0\n'
        f'ca = "{p.ca}"\ncert = "{p.cert}"\nkey = "{p.tls_key}"\nack_timeout_s = 3.0\n'
        "backoff_min_s = 0.2\nbackoff_max_s = 1.0\nkeepalive_s = 5\nconnect_timeout_s = 2.0\n"
        + test)


class Board:
    """A target wired to a lab: what every HIL test drives.  `with Board(...)` or
    `up()`/`down()`."""

    def __init__(self, target: Target, topology: str = "routed", *,
                 clock_offset: bool = False) -> None:
        self.target = target
        self.topology = topology
        self.clock = clock_offset
        self.lab = Lab(**target.lab_options())
        self.lab.topology = topology
        self.sensor_id = f"hil-{topology}-{self.lab.n}"
        self.capture: dict[str, str] = {}
        self.started_at = 0.0

    @property
    def bucket_s(self) -> int:
        return self.target.bucket_s

    # ------------------------------------------------------------------ lifecycle
    def up(self) -> Board:
        t, lab = self.target, self.lab
        try:
            lab.create()
            t.wire(lab)
            lab.configure_scanner(self.topology, t.capture_mac)
            t.provision(self)
            lab.start_broker()
            lab.start_receiver()
            t.netsetup()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        with contextlib.suppress(Exception):
            self.target.kill_all()
        with contextlib.suppress(Exception):
            self.target.down()
        self.lab.down()

    def __enter__(self) -> Board:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def config_text(self, **capture: str) -> str:
        return render_config(self.target, self.sensor_id, self.topology, clock=self.clock,
                             **capture)

    def write_config(self, **capture: str) -> None:
        self.capture = capture
        self.target.deploy_config(self.config_text(**capture))

    # ------------------------------------------------------------------ sensor
    def start(self, *, uplink_thread: bool = False) -> Board:
        self.target.start(uplink_thread=uplink_thread)
        self.started_at = time.time()
        return self

    def start_sensor(self) -> None:
        self.target.start_sensor()

    def stop_sensor(self, sig: int = signal.SIGTERM) -> int | None:
        return self.target.stop("sensor", sig)

    def signal_sensor(self, sig: int) -> None:
        self.target.signal("sensor", sig)

    def sensor_log(self) -> str:
        return self.target.logs("sensor")

    def power_cut(self) -> None:
        self.target.power_cut()
        self.target.power_cuts += 1

    def boot(self, *, start: bool = True) -> None:
        """Power on: the board boots; netsetup and the programs start (the units do it on
        the SD image; the harness does what they would in process mode)."""
        self.target.boot()
        if start and not self.target.units:
            self.target.netsetup()
            self.target.start()

    def set_clock_offset(self, seconds: float) -> None:
        self.target.write_file(self.target.paths.clock, f"{seconds}\n")

    # ------------------------------------------------------------------ lab
    def send(self, *args: str) -> dict[str, Any]:
        return self.lab.send(*args)

    def scanner_capture(self) -> contextlib.AbstractContextManager[list[bytes]]:
        return self.lab.capture_in()

    def kill_broker(self) -> None:
        self.lab.kill_broker()

    def start_broker(self) -> None:
        self.lab.start_broker()

    def summaries(self) -> list[StoredSummary]:
        return self.lab.summaries()

    def wait_sealed_after(self, t_wall: float, timeout: float = 30) -> list[StoredSummary]:
        """Wait until central stored a summary of a bucket that starts after `t_wall`."""
        return list(wait_for(
            lambda: (lambda ss: ss if any(s.hour_start >= t_wall for s in ss) else None)(
                self.summaries()),
            timeout + 2 * self.bucket_s,
            f"a summary after {t_wall:.1f} in the central database", step=0.3))

    def spool_count(self) -> int:
        return self.target.spool_count()

    def verify_spool(self) -> dict[str, Any]:
        """Every envelope in the spool parses and verifies with the enrolled key."""
        from wire.envelope import EnvelopeError, verify_envelope

        snap = self.target.spool()
        keyring = self.lab.keyring()
        bad = []
        for name, data in snap.entries.items():
            try:
                v = verify_envelope(data, keyring)
                if f"{v.envelope.hour_start:016x}-{v.envelope.sequence:016x}.tenv" != name:
                    bad.append((name, "name_mismatch"))
            except EnvelopeError as exc:
                bad.append((name, exc.reason))
        return {"entries": len(snap.entries), "bad": bad, "quarantined": snap.quarantined,
                "temporary": snap.temporary}


def totals(summaries: list[StoredSummary]) -> dict[str, Any]:
    """Sum what a list of summaries counted, in the sender's truth units."""
    from wire.summary import proto_name

    ports: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    malformed = packets = late = 0
    for s in summaries:
        sm = s.summary
        packets += sm.packets
        for r in sm.ports:
            ports[f"{proto_name(r.proto)}/{r.port}"] += r.packets
        for k, v in sm.fingerprints.items():
            if v:
                fp[k] += v
        malformed += sum(sm.malformed.values())
        late += int(sm.health.get("late_packets", 0))
    return {"packets": packets, "ports": dict(ports), "fingerprints": dict(fp),
            "malformed": malformed, "late": late}


def add_truths(*truths: dict[str, Any]) -> dict[str, Any]:
    ports: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    for t in truths:
        ports.update(t["ports"])
        fp.update(t["fingerprints"])
    return {"packets": sum(t["packets"] for t in truths), "ports": dict(ports),
            "fingerprints": dict(fp), "malformed": sum(t["malformed"] for t in truths)}
