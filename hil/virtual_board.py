"""The virtual board: a Teiten deployment in three network namespaces (needs root).

    scanner ──veth── sensor ──veth── central
    sc0          cap0    up0         br0
                 (capture)           mosquitto (mutual TLS) + `teiten central receive`

- `scanner` sends into the dark blocks 198.51.100.0/24 and 2001:db8:dead::/48, which are
  routed to the sensor per topology: `routed` via the sensor's management address
  (192.0.2.2, 2001:db8:1::2), `dedicated` via a next hop that does not exist, pinned to
  the sensor's MAC by a static neighbour entry (the capture interface has no address),
  `onlink` as connected routes, so the scanner ARPs/solicits for every dark address and
  the sensor's responder must answer.  In `routed` the scanner has static neighbour
  entries too, so any ARP reply the sensor sends is a failure, not noise.
- `sensor` runs what `teiten-netsetup.service` runs as root (`teiten firewall`, `nft -f`
  of the ruleset, `teiten netsetup`), then `teiten run` as user `teiten` with only
  CAP_NET_RAW and `teiten uplink` as user `teiten-uplink` (group `teiten`), through
  `setpriv`, as the units in board/rpi would: neither can read the other's key.
- `central` runs a real Mosquitto and the receiver writing a real SQLite database.

The board's files live in a 0755 directory under /tmp (not pytest's 0700 tmp_path) so the
unprivileged `teiten` user can reach them.  The lab suite drives a real Pi through the same
methods (`send`, `summaries`, `capture_replies`...).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
USER = "teiten"
UPLINK_USER = "teiten-uplink"
DARK4 = "198.51.100.0/24"
DARK6 = "2001:db8:dead::/48"
SENSOR_V4, SCANNER_V4 = "192.0.2.2", "192.0.2.1"
SENSOR_V6, SCANNER_V6 = "2001:db8:1::2", "2001:db8:1::1"
CENTRAL_V4, SENSOR_UP_V4 = "10.77.0.2", "10.77.0.1"
_counter = itertools.count()


def sh(
    *cmd: str, check: bool = True, timeout: float = 30, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True,
                          timeout=timeout, **kw)


def ensure_user() -> tuple[int, int]:
    """The daemon's user `teiten` (and its group), as board/rpi/teiten.sysusers makes it."""
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
           "--user-group", USER)
        pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid


def ensure_uplink_user() -> int:
    """The uplink's user `teiten-uplink`, primary group `teiten` (teiten.sysusers)."""
    ensure_user()
    try:
        pw = pwd.getpwnam(UPLINK_USER)
    except KeyError:
        sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
           "--gid", USER, UPLINK_USER)
        pw = pwd.getpwnam(UPLINK_USER)
    return pw.pw_uid


def wait_for(cond: Any, timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class StoredSummary:
    sequence: int
    hour_start: int
    summary: Any  # wire.summary.Summary


class VirtualBoard:
    """Build with `VirtualBoard(topology).up()`; always `down()` (or use `with`)."""

    def __init__(self, topology: str = "routed", *, bucket_s: int = 2,
                 grace_s: float = 0.5, clock_offset: bool = False) -> None:
        n = f"{os.getpid() % 10000}{next(_counter)}"
        self.topology = topology
        self.bucket_s = bucket_s
        self.grace_s = grace_s
        self.ns = {k: f"teiten-{k}-{n}" for k in ("scanner", "sensor", "central")}
        self.sensor_id = f"vb-{topology}-{n}"
        self.dir = Path(tempfile.mkdtemp(prefix="teiten-hil-"))
        os.chmod(self.dir, 0o755)
        self.board = self.dir / "board"
        self.clock_file = self.board / "clock-offset" if clock_offset else None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.sensor_mac = ""
        self.scanner_mac = ""
        self.notify: socket.socket | None = None
        self._said: list[str] = []

    # ---------------------------------------------------------------- plumbing
    def ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.ns[ns], *args, check=check)

    def exec(self, ns: str, *cmd: str, check: bool = True, timeout: float = 60,
             **kw: Any) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns[ns], *cmd, check=check, timeout=timeout, **kw)

    def sysctl(self, ns: str, *settings: str) -> None:
        self.exec(ns, "sysctl", "-qw", *settings)

    def _mac(self, ns: str, dev: str) -> str:
        out = json.loads(self.ip(ns, "-j", "link", "show", dev).stdout)
        return str(out[0]["address"])

    def up(self) -> VirtualBoard:
        try:
            self._network()
            self._pki_and_files()
            self.start_broker()
            self.start_receiver()
            self.netsetup()
        except BaseException:
            self.down()
            raise
        return self

    def __enter__(self) -> VirtualBoard:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _network(self) -> None:
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
        for ns in self.ns:
            self.ip(ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "sc0", "netns", self.ns["scanner"], "type", "veth",
           "peer", "name", "cap0", "netns", self.ns["sensor"])
        sh("ip", "link", "add", "up0", "netns", self.ns["sensor"], "type", "veth",
           "peer", "name", "br0", "netns", self.ns["central"])
        # management link: IPv4 only, no neighbour-discovery noise
        for ns, dev in (("sensor", "up0"), ("central", "br0")):
            self.sysctl(ns, f"net.ipv6.conf.{dev}.disable_ipv6=1")
        self.ip("sensor", "addr", "add", f"{SENSOR_UP_V4}/30", "dev", "up0")
        self.ip("central", "addr", "add", f"{CENTRAL_V4}/30", "dev", "br0")
        self.ip("sensor", "link", "set", "up0", "up")
        self.ip("central", "link", "set", "br0", "up")
        # scanner side of the capture link
        self.sysctl("scanner", "net.ipv6.conf.sc0.accept_dad=0", "net.ipv6.conf.sc0.accept_ra=0")
        self.ip("scanner", "addr", "add", f"{SCANNER_V4}/30", "dev", "sc0")
        self.ip("scanner", "addr", "add", f"{SCANNER_V6}/64", "dev", "sc0", "nodad")
        if self.topology == "routed":
            self.sysctl("sensor", "net.ipv6.conf.cap0.accept_dad=0",
                        "net.ipv6.conf.cap0.accept_ra=0",
                        "net.ipv6.conf.cap0.router_solicitations=0")
            self.ip("sensor", "addr", "add", f"{SENSOR_V4}/30", "dev", "cap0")
            self.ip("sensor", "addr", "add", f"{SENSOR_V6}/64", "dev", "cap0", "nodad")
        else:
            # an interface with no address: no IPv6 either (netsetup would do it too, but
            # a link-local address must not even appear before netsetup runs)
            self.sysctl("sensor", "net.ipv6.conf.cap0.disable_ipv6=1")
        self.sensor_mac = self._mac("sensor", "cap0")
        self.scanner_mac = self._mac("scanner", "sc0")
        self.ip("scanner", "link", "set", "sc0", "up")
        if self.topology == "onlink":
            self.ip("scanner", "route", "add", DARK4, "dev", "sc0")
            self.ip("scanner", "-6", "route", "add", DARK6, "dev", "sc0")
        else:
            for addr in (SENSOR_V4, SENSOR_V6):
                self.ip("scanner", "neigh", "replace", addr, "lladdr", self.sensor_mac,
                        "nud", "permanent", "dev", "sc0")
            self.ip("scanner", "route", "add", DARK4, "via", SENSOR_V4)
            self.ip("scanner", "-6", "route", "add", DARK6, "via", SENSOR_V6)

    def _pki_and_files(self) -> None:
        from central.ca import init_ca, issue_sensor
        from sensor.edges.certs import make_csr
        from sensor.edges.keys import generate_key
        from wire.keys import public_key_text

        uid, gid = ensure_user()
        uplink_uid = ensure_uplink_user()
        self.board.mkdir(mode=0o750)
        (self.board / "spool").mkdir()
        os.chmod(self.board / "spool", 0o770)  # as teiten.tmpfiles: the uplink removes
        self.ca = init_ca(self.dir / "ca", hosts=["localhost", "127.0.0.1", CENTRAL_V4])
        self.sig_key = self.board / "sensor.key"
        pub = generate_key(self.sig_key).public_key()
        tls_key = self.board / "tls.key"
        cert = self.board / "sensor.crt"
        cert.write_bytes(issue_sensor(self.ca.dir, self.sensor_id, make_csr(tls_key,
                                                                             self.sensor_id)))
        shutil.copy(self.ca.ca_crt, self.board / "ca.crt")
        if self.clock_file is not None:
            self.clock_file.write_text("0\n")
        self.config = self.board / "sensor.toml"
        self.write_config()
        for p in [self.board, *self.board.rglob("*")]:
            os.chown(p, uid, gid)
        os.chown(tls_key, uplink_uid, gid)  # 0600: the uplink's alone, as on the board
        self.tls_key = tls_key
        central = self.dir / "central"
        central.mkdir()
        self.db = central / "central.db"
        (central / "sensors.toml").write_text(
            f'[sensors]\n[sensors.{self.sensor_id}]\npublic_key = "{public_key_text(pub)}"\n')
        (central / "central.toml").write_text(
            f'[receiver]\nhost = "127.0.0.1"\nport = 8883\nca = "{self.ca.ca_crt}"\n'
            f'cert = "{self.ca.receiver_crt}"\nkey = "{self.ca.receiver_key}"\n'
            f'database = "{self.db}"\nsensors = "{central / "sensors.toml"}"\n'
            "keepalive_s = 5\n")

    def write_config(self, **capture: str) -> None:
        extra = "".join(f"{k} = {v}\n" for k, v in capture.items())
        test = f"[test]\nbucket_seconds = {self.bucket_s}\n"
        if self.clock_file is not None:
            test += f'clock_offset_file = "{self.clock_file}"\n'
        self.config.write_text(
            f'[sensor]\nid = "{self.sensor_id}"\ntopology = "{self.topology}"\n'
            f'key = "{self.sig_key}"\n'
            f'[capture]\ninterface = "cap0"\ndarknet = ["{DARK4}", "{DARK6}"]\n'
            f"timeout_ms = 100\nreopen_min_s = 0.2\nreopen_max_s = 1.0\n{extra}"
            f'[spool]\npath = "{self.board / "spool"}"\n'
            f"[time]\nwait_for_sync_s = 0\nclose_grace_s = {self.grace_s}\n"
            "step_threshold_s = 1.0\n"
            f'[uplink]\nhost = "{CENTRAL_V4}"\nport = 8883\nws_port = 0\n'
            f'ca = "{self.board / "ca.crt"}"\ncert = "{self.board / "sensor.crt"}"\n'
            f'key = "{self.board / "tls.key"}"\nack_timeout_s = 3.0\nbackoff_min_s = 0.2\n'
            "backoff_max_s = 1.0\nkeepalive_s = 5\nconnect_timeout_s = 2.0\n" + test)

    # ---------------------------------------------------------------- central
    def start_broker(self) -> None:
        from central.config import acl_text, render_mosquitto_conf

        d = self.dir / "broker"
        (d / "data").mkdir(parents=True, exist_ok=True)
        (d / "acl").write_text(acl_text())
        conf = d / "mosquitto.conf"
        conf.write_text(render_mosquitto_conf(
            data_dir=d / "data", acl_file=d / "acl", cafile=self.ca.ca_crt,
            certfile=self.ca.server_crt, keyfile=self.ca.server_key, tls_port=8883,
            ws_port=8884, bind="", extra="user root"))
        mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self._spawn("broker", ["ip", "netns", "exec", self.ns["central"], mosq, "-c",
                               str(conf)], d / "mosquitto.log")
        wait_for(lambda: self._port_open("central", "127.0.0.1", 8883), 10, "mosquitto")

    def kill_broker(self) -> None:
        self._kill("broker", signal.SIGKILL)

    def _port_open(self, ns: str, host: str, port: int) -> bool:
        code = (f"import socket\ntry:\n socket.create_connection(({host!r}, {port}), 0.3)"
                "\nexcept OSError:\n raise SystemExit(1)")
        return self.exec(ns, "python3", "-c", code, check=False).returncode == 0

    def start_receiver(self) -> None:
        log = self.dir / "central" / "receiver.log"
        code = ("import sys\nfrom sensor.cli import main\nsys.exit(main(['central', "
                f"'receive', '-v', '--config', {str(self.dir / 'central' / 'central.toml')!r}]))")
        self._spawn("receiver", ["ip", "netns", "exec", self.ns["central"], PY, "-c", code],
                    log)
        wait_for(lambda: "connected (session" in log.read_text(errors="replace")
                 or self.procs["receiver"].poll() is not None, 20, "the receiver")
        if self.procs["receiver"].poll() is not None:
            raise RuntimeError("receiver exited:\n" + log.read_text()[-3000:])

    # ---------------------------------------------------------------- sensor
    def netsetup(self) -> subprocess.CompletedProcess[str]:
        """What teiten-netsetup.service runs: render the firewall from the config, load
        it with nft, then set up the interface (board/rpi/teiten-netsetup.service)."""
        rules = self.dir / "nftables.conf"
        self.exec("sensor", PY, "-m", "sensor.cli", "firewall", "--config", str(self.config),
                  "--out", str(rules), cwd=REPO, env=self._env())
        self.exec("sensor", "nft", "-f", str(rules), env=self._env())
        return self.exec("sensor", PY, "-m", "sensor.cli", "netsetup", "--config",
                         str(self.config), cwd=REPO, env=self._env())

    def firewall_counters(self) -> str:
        """The loaded ruleset with its counters (what the board's firewall dropped)."""
        return self.exec("sensor", "nft", "list", "table", "inet", "teiten",
                         env=self._env()).stdout

    def doctor(self) -> dict[str, Any]:
        r = self.exec("sensor", PY, "-m", "sensor.cli", "doctor", "--json", "--config",
                      str(self.config), check=False, cwd=REPO, env=self._env())
        return dict(json.loads(r.stdout))

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO),
                "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}

    def _as_teiten(self, caps: bool, user: str = USER) -> list[str]:
        cmd = ["setpriv", "--reuid", user, "--regid", USER, "--init-groups"]
        if caps:
            cmd += ["--inh-caps", "+net_raw", "--ambient-caps", "+net_raw",
                    "--bounding-set", "-all,+net_raw"]
        else:
            cmd += ["--inh-caps", "-all", "--bounding-set", "-all"]
        return [*cmd, "--"]

    def start_sensor(self, *, uplink_thread: bool = False) -> None:
        """`teiten run` as user teiten with CAP_NET_RAW only (as the systemd unit does)."""
        cmd = ["ip", "netns", "exec", self.ns["sensor"], *self._as_teiten(True), PY, "-m",
               "sensor.cli", "run", "-v", "--config", str(self.config)]
        if uplink_thread:
            cmd.append("--uplink")
        log = self.dir / "sensor.log"
        # systemd's side of sd_notify: a datagram socket the daemon reports to
        if self.notify is None:
            path = self.dir / "notify.sock"
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(str(path))
            self.notify.settimeout(0.2)
            os.chmod(path, 0o777)
            threading.Thread(target=self._listen, daemon=True).start()
        env = {"NOTIFY_SOCKET": str(self.dir / "notify.sock"), "WATCHDOG_USEC": "1000000"}
        seen = log.stat().st_size if log.exists() else 0
        self._spawn("sensor", cmd, log, env)
        wait_for(lambda: "capturing on" in log.read_text(errors="replace")[seen:]
                 or self.procs["sensor"].poll() is not None, 20, "the sensor to capture")
        if self.procs["sensor"].poll() is not None:
            raise RuntimeError("sensor exited:\n" + log.read_text()[-3000:])
        time.sleep(0.3)  # the capture handle is open once the log says so; let it settle

    def start_uplink(self) -> None:
        cmd = ["ip", "netns", "exec", self.ns["sensor"], *self._as_teiten(False, UPLINK_USER),
               PY, "-m", "sensor.cli", "uplink", "-v", "--config", str(self.config)]
        self._spawn("uplink", cmd, self.dir / "uplink.log")

    def start(self, *, uplink_thread: bool = False) -> VirtualBoard:
        """Daemon and uplink as two processes (the units), or one with an uplink thread.

        One process (`teiten run --uplink`) holds both keys, so the TLS key is the
        daemon user's then: the separation of the two units is given up."""
        if uplink_thread:
            uid, gid = ensure_user()
            os.chown(self.tls_key, uid, gid)
        self.start_sensor(uplink_thread=uplink_thread)
        if not uplink_thread:
            self.start_uplink()
        return self

    def signal_sensor(self, sig: int) -> None:
        p = self.procs["sensor"]
        # ip netns exec and setpriv exec the next program: the pid is python's
        os.kill(p.pid, sig)

    def stop_sensor(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        p = self.procs.pop("sensor")
        p.send_signal(sig)
        return p.wait(timeout=timeout)

    def sensor_log(self) -> str:
        return (self.dir / "sensor.log").read_text(errors="replace")

    def _spawn(self, name: str, cmd: list[str], log: Path,
               env: dict[str, str] | None = None) -> None:
        with log.open("ab") as fh:
            self.procs[name] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                                cwd=REPO, env={**self._env(), **(env or {})})

    def _listen(self) -> None:
        while self.notify is not None:
            try:
                self._said.append(self.notify.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def notifications(self) -> list[str]:
        """Messages the daemon sent to its (simulated) systemd so far."""
        return list(self._said)

    def sensor_identity(self, name: str = "sensor") -> tuple[int, int]:
        """(uid, effective capability mask) of the running daemon (or uplink)."""
        status = Path(f"/proc/{self.procs[name].pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return int(fields["Uid"].split()[1]), int(fields["CapEff"].strip(), 16)

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

    def down(self) -> None:
        for name in ("sensor", "uplink", "receiver", "broker", "tcpdump"):
            with contextlib.suppress(Exception):
                self._kill(name)
        for name in self.ns.values():
            sh("ip", "netns", "del", name, check=False)
        if self.notify is not None:
            sock, self.notify = self.notify, None
            sock.close()
        if os.environ.get("TEITEN_HIL_KEEP"):
            print(f"virtual board files kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---------------------------------------------------------------- scanner
    def send(self, *args: str) -> dict[str, Any]:
        r = self.exec("scanner", PY, str(REPO / "hil" / "send.py"), *args, cwd=REPO,
                      env=self._env())
        return dict(json.loads(r.stdout))

    @contextlib.contextmanager
    def scanner_capture(self) -> Iterator[list[bytes]]:
        """Capture every frame the scanner *receives* on sc0; the list fills on exit."""
        out = self.dir / "scanner-in.pcap"
        err = self.dir / "tcpdump.err"
        with err.open("wb") as fh:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns["scanner"], "tcpdump", "-n",
                                  "-U", "-Q", "in", "-i", "sc0", "-w", str(out)],
                                 stdout=subprocess.DEVNULL, stderr=fh)
        frames: list[bytes] = []
        try:
            wait_for(lambda: b"listening on" in err.read_bytes(), 10, "tcpdump")
            yield frames
            time.sleep(0.5)
        finally:
            p.send_signal(signal.SIGINT)
            p.wait(timeout=10)
        from sensor.edges.pcap import open_file

        with open_file(out) as src:
            for batch in src.batches():
                frames.extend(f.data for f in batch)

    # ---------------------------------------------------------------- central database
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
                out.append(StoredSummary(row.sequence, row.hour_start,
                                         decode_summary(decompress_capped(env.payload,
                                                                          1 << 24))))
        return sorted(out, key=lambda s: (s.hour_start, s.sequence))

    def wait_sealed_after(self, t_wall: float, timeout: float = 30) -> list[StoredSummary]:
        """Wait until central stored a summary of a bucket that starts after `t_wall`."""
        return list(wait_for(
            lambda: (lambda ss: ss if any(s.hour_start >= t_wall for s in ss) else None)(
                self.summaries()),
            timeout, f"a summary after {t_wall:.1f} in the central database", step=0.3))

    def spool_count(self) -> int:
        return len(list((self.board / "spool").glob("*.tenv")))


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
