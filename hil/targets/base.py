"""The target interface: what a HIL test may do to a board, whichever board it is.

Layering, after labgrid (resources, drivers, strategies), without depending on it:

- a *transport* is the resource: how a root shell on the board is reached (`ip netns exec`
  for the virtual board, `ssh` for a lab Pi or the booted image).  It is one method,
  `Target.sh(script, stdin)`, returning a CompletedProcess;
- the *driver* is everything written on top of that shell, once, in this file: copy files
  to the board (a tar on stdin), start and signal processes, read the spool (a tar on
  stdout), read logs and the state of the daemon (`/proc/PID/status`, or systemd);
- the *strategy* is the target subclass: how the board is wired to the lab, how it powers
  off and boots, whether systemd runs the units (`units=True`, the SD image) or the harness
  does (process mode: what the units would run, with `setpriv`, as the virtual board
  always did).

A test only sees `hil.lab.Board`, which combines a target with the lab (scanner, central).
"""

from __future__ import annotations

import io
import json
import shlex
import signal as _signal
import subprocess
import tarfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hil.lab import Board, Lab

REPO = Path(__file__).resolve().parents[2]
USER = "teiten"
UPLINK_USER = "teiten-uplink"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNITS = {"sensor": "teiten-sensor.service", "uplink": "teiten-uplink.service"}

# A tiny systemd stand-in for process mode: the datagram socket sd_notify reports to.
NOTIFY_LISTENER = r"""
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o777)
with open(log, "a", buffering=1) as fh:
    while True:
        fh.write(s.recv(4096).decode(errors="replace").replace("\n", "|") + "\n")
"""


class TargetError(RuntimeError):
    pass


@dataclass
class BoardPaths:
    """Where the board keeps its files (paths on the board)."""

    root: str
    interface: str  # the capture interface
    config: str = ""
    key: str = ""
    tls_key: str = ""
    cert: str = ""
    ca: str = ""
    spool: str = ""
    clock: str = ""

    def __post_init__(self) -> None:
        r = self.root
        self.config = self.config or f"{r}/sensor.toml"
        self.key = self.key or f"{r}/sensor.key"
        self.tls_key = self.tls_key or f"{r}/tls.key"
        self.cert = self.cert or f"{r}/sensor.crt"
        self.ca = self.ca or f"{r}/ca.crt"
        self.spool = self.spool or f"{r}/spool"
        self.clock = self.clock or f"{r}/clock-offset"


@dataclass
class UnitState:
    """What systemd (or the harness, in process mode) knows about one program."""

    active: bool
    pid: int = 0
    uid: int = -1
    cap_eff: int = -1
    ready: bool = False  # READY=1 was sent
    watchdog: int = 0  # WATCHDOG=1 pings seen (process mode; 1 under systemd if armed)
    stopping: bool = False
    detail: str = ""


@dataclass
class SpoolSnapshot:
    entries: dict[str, bytes] = field(default_factory=dict)  # name -> envelope bytes
    quarantined: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)
    other: dict[str, bytes] = field(default_factory=dict)  # health.json, anything else


class Target(ABC):
    """One board.  Subclasses implement the transport and the power strategy."""

    kind = "?"
    units = False  # True: systemd on the board runs the units (the SD image)
    topologies: tuple[str, ...] = ("routed", "dedicated", "onlink")
    bucket_s = 2
    grace_s = 0.5
    python = "python3"  # process mode: the board's interpreter
    pythonpath = ""  # process mode: where the project's packages are on the board
    boot_timeout_s = 60.0
    # the rate ramp's default steps (packets per second) and seconds per step
    ramp_rates: tuple[int, ...] = (10_000, 50_000, 200_000, 400_000)
    ramp_step_s = 1.0

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.paths = BoardPaths("/tmp/thil-board", "cap0")
        self.capture_mac = ""
        self.uplink_host = "10.77.0.2"
        self.uplink_port = 8883
        self.power_cuts = 0

    # ------------------------------------------------------------------ transport
    @abstractmethod
    def sh(self, script: str, *, stdin: bytes | None = None, timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run a shell script as root on the board."""

    def out(self, script: str, **kw: Any) -> str:
        return self.sh(script, **kw).stdout.decode(errors="replace")

    # ------------------------------------------------------------------ strategy
    @abstractmethod
    def wire(self, lab: Lab) -> None:
        """Bring the board up and connect its capture port and uplink to the lab."""

    @abstractmethod
    def power_cut(self) -> None:
        """Cut the power: every process dies at once, nothing is shut down cleanly."""

    @abstractmethod
    def boot(self) -> None:
        """Power on after a cut and wait until the board can be reached again."""

    def down(self) -> None:  # noqa: B027 (a target may have nothing to undo)
        """Undo `wire` (the lab removes its own namespaces)."""

    def lab_options(self) -> dict[str, Any]:
        """How this target wants the lab built (hil.lab.Lab keyword arguments)."""
        return {}

    def provision(self, board: Board) -> None:
        """Keys, certificate and config onto the board (process mode: made by the lab)."""
        secrets = board.lab.pki(board.sensor_id, self.uplink_host)
        if board.clock:
            secrets["clock"] = b"0\n"
        self.deploy(board.config_text(), secrets)

    def describe(self) -> str:
        """Software on the board: image version or git commit."""
        return self.out("cat /etc/teiten-release 2>/dev/null || true").strip() or "?"

    # ------------------------------------------------------------------ driver: files
    def ensure_users(self) -> None:
        self.sh(f"export PATH={PATH}; id -u {USER} >/dev/null 2>&1 || useradd --system "
                f"--no-create-home --shell /usr/sbin/nologin --user-group {USER}; "
                f"id -u {UPLINK_USER} >/dev/null 2>&1 || useradd --system --no-create-home "
                f"--shell /usr/sbin/nologin --gid {USER} {UPLINK_USER}")

    def put_files(self, files: dict[str, tuple[bytes, int, str]]) -> None:
        """Write files on the board: path -> (data, mode, "user:group"), one tar on stdin."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, (data, mode, _owner) in files.items():
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        owners = "; ".join(f"chown {shlex.quote(o)} {shlex.quote(p)}"
                           for p, (_d, _m, o) in files.items())
        self.sh(f"export PATH={PATH}; tar -x -p --no-same-owner -C / -f - && {owners}",
                stdin=buf.getvalue())

    def write_file(self, path: str, text: str, owner: str = f"{USER}:{USER}",
                   mode: int = 0o644) -> None:
        self.put_files({path: (text.encode(), mode, owner)})

    def deploy(self, config: str, secrets: dict[str, bytes]) -> None:
        """Put the config and the board's keys and certificates on it (process mode)."""
        p = self.paths
        self.ensure_users()
        self.sh(f"rm -rf {p.spool} && mkdir -p {p.root} {p.spool} && chmod 0750 {p.root} "
                f"&& chmod 0770 {p.spool} && chown {USER}:{USER} {p.root} {p.spool}")
        files = {
            p.config: (config.encode(), 0o640, f"root:{USER}"),
            p.key: (secrets["key"], 0o600, f"{USER}:{USER}"),
            p.tls_key: (secrets["tls_key"], 0o600, f"{UPLINK_USER}:{USER}"),
            p.cert: (secrets["cert"], 0o644, f"{USER}:{USER}"),
            p.ca: (secrets["ca"], 0o644, f"{USER}:{USER}"),
        }
        if "clock" in secrets:
            files[p.clock] = (secrets["clock"], 0o644, f"{USER}:{USER}")
        self.put_files(files)

    def boot_with_config(self, config: str) -> dict[str, Any]:
        """After a power cut: this config on the card, then boot.  What first boot does on
        the image (sensor/edges/firstboot.py): a valid config is installed, an invalid one
        is refused and named (teiten-error.txt), and the last good one keeps running.
        Returns {"started": bool, "error": the refusal's text, "" if accepted}."""
        self.boot()
        check = self.config_check_text(config)
        error = ""
        if check.get("ok"):
            self.deploy_config(config)
        else:
            error = "\n".join(f"{f['field']}: {f['reason']}" for f in check["findings"])
            self.write_file(f"{self.paths.root}/teiten-error.txt", error + "\n")
        self.netsetup()
        self.start()
        return {"started": self.unit_state("sensor").active, "error": error}

    def config_check_text(self, config: str) -> dict[str, Any]:
        path = f"{self.paths.root}/card-teiten.toml"
        self.write_file(path, config, f"root:{USER}", 0o640)
        return self.config_check(path)

    def deploy_config(self, config: str) -> None:
        """Replace the config only (SIGHUP reloads it)."""
        self.write_file(self.paths.config, config, f"root:{USER}", 0o640)

    def tls_key_to_sensor_user(self) -> None:
        """`teiten run --uplink`: one process holds both keys."""
        self.sh(f"chown {USER}:{USER} {self.paths.tls_key}")

    # ------------------------------------------------------------------ driver: programs
    def teiten(self, prefix: str = "") -> str:
        """How to invoke the CLI on the board (a shell fragment); `prefix` (setpriv ...)
        goes between the environment and the interpreter."""
        if self.units:
            return f"{prefix} teiten"
        env = f"PYTHONPATH={shlex.quote(self.pythonpath)} " if self.pythonpath else ""
        return (f"env {env}PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8 {prefix} {self.python} "
                "-m sensor.cli")

    def netsetup(self) -> None:
        """What teiten-netsetup.service runs: the firewall from the config, then netsetup."""
        if self.units:
            self.sh("systemctl restart teiten-netsetup.service", timeout=120)
            return
        p = self.paths
        self.sh(f"export PATH={PATH}; cd {p.root} && {self.teiten()} firewall --config "
                f"{p.config} --out {p.root}/nftables.conf && nft -f {p.root}/nftables.conf "
                f"{self.after_firewall()}&& {self.teiten()} netsetup --config {p.config}",
                timeout=120)

    def after_firewall(self) -> str:
        """Shell run right after the ruleset is loaded (the ssh target opens SSH)."""
        return ""

    def _setpriv(self, caps: bool, user: str) -> str:
        cmd = f"setpriv --reuid {user} --regid {USER} --init-groups"
        if caps:
            cmd += " --inh-caps +net_raw --ambient-caps +net_raw --bounding-set -all,+net_raw"
        else:
            cmd += " --inh-caps -all --bounding-set -all"
        return cmd

    def _spawn(self, name: str, command: str, env: str = "") -> None:
        """Start a program detached from the transport, as the board's own child: its pid
        in NAME.pid, its exit status in NAME.rc once it ends (what systemd would record)."""
        r = self.paths.root
        inner = (f"{env} {command} >> {r}/{name}.log 2>&1 < /dev/null & "
                 f"echo $! > {r}/{name}.pid; wait $!; echo $? > {r}/{name}.rc")
        self.sh(f"export PATH={PATH}; cd {r} && rm -f {r}/{name}.pid {r}/{name}.rc && "
                f"(setsid sh -c {shlex.quote(inner)} > /dev/null 2>&1 < /dev/null &)")
        self._wait(lambda: self._pid(name), 10, f"{name} to start", step=0.05)

    def _pid(self, name: str) -> int:
        if self.units:
            out = self.out(f"systemctl show -p MainPID --value {UNITS[name]}", check=False)
            return int(out.strip() or 0)
        out = self.out(f"cat {self.paths.root}/{name}.pid 2>/dev/null", check=False).strip()
        return int(out) if out.isdigit() else 0

    def _alive(self, pid: int) -> bool:
        if pid <= 0:
            return False
        st = self.out(f"cat /proc/{pid}/stat 2>/dev/null", check=False)
        return bool(st) and st.rsplit(")", 1)[-1].split()[0] != "Z"

    def start_sensor(self, *, uplink_thread: bool = False, timeout: float = 60) -> None:
        if self.units:
            self.sh("systemctl start teiten-sensor.service", timeout=timeout + 60)
            return
        p = self.paths
        seen = len(self.logs("sensor"))
        if not self._alive(self._pid("notify")):
            self._spawn("notify", f"{self.python} -c {shlex.quote(NOTIFY_LISTENER)} "
                        f"{p.root}/notify.sock {p.root}/notify.log")
            self._wait(lambda: "notify.sock" in self.out(f"ls {p.root}"), 10, "notify socket")
        self.sh(f": > {p.root}/notify.log")
        cmd = (f"{self.teiten(self._setpriv(True, USER) + ' --')} run -v --config {p.config}"
               + (" --uplink" if uplink_thread else ""))
        self._spawn("sensor", cmd, env=f"NOTIFY_SOCKET={p.root}/notify.sock "
                                       "WATCHDOG_USEC=1000000")
        self._wait(lambda: "capturing on" in self.logs("sensor")[seen:]
                   or not self._alive(self._pid("sensor")), timeout, "the sensor to capture")
        if not self._alive(self._pid("sensor")):
            raise TargetError("sensor exited:\n" + self.logs("sensor")[-3000:])
        time.sleep(0.3)

    def start_uplink(self) -> None:
        if self.units:
            self.sh("systemctl start teiten-uplink.service")
            return
        self._spawn("uplink", f"{self.teiten(self._setpriv(False, UPLINK_USER) + ' --')} "
                    f"uplink -v --config {self.paths.config}")

    def start(self, *, uplink_thread: bool = False) -> None:
        if uplink_thread:
            self.tls_key_to_sensor_user()
        self.start_sensor(uplink_thread=uplink_thread)
        if not uplink_thread:
            self.start_uplink()

    def signal(self, name: str, sig: int) -> None:
        if self.units:
            self.sh(f"systemctl kill --kill-whom=main -s {int(sig)} {UNITS[name]}")
            return
        pid = self._pid(name)
        if pid:
            self.sh(f"kill -{int(sig)} {pid}", check=False)

    def stop(self, name: str = "sensor", sig: int = _signal.SIGTERM,
             timeout: float = 30) -> int | None:
        """Signal a program and wait for it to exit; its exit status (None under systemd
        for a signal other than SIGTERM)."""
        if self.units:
            if sig == _signal.SIGTERM:
                self.sh(f"systemctl stop {UNITS[name]}", timeout=timeout + 30)
                res = self.out(f"systemctl show -p ExecMainStatus --value {UNITS[name]}")
                return int(res.strip() or 0)
            self.signal(name, sig)
            self._wait(lambda: not self.unit_state(name).active, timeout, f"{name} to die")
            self.sh(f"systemctl stop {UNITS[name]}", check=False)
            return None
        pid = self._pid(name)
        rc = f"{self.paths.root}/{name}.rc"
        self.signal(name, sig)
        self._wait(lambda: self.out(f"cat {rc} 2>/dev/null", check=False).strip(), timeout,
                   f"{name} (pid {pid}) to exit")
        status = int(self.out(f"cat {rc}").strip())
        self.sh(f"rm -f {self.paths.root}/{name}.pid")
        return status

    def kill_all(self) -> None:
        """SIGKILL every Teiten program (not the board)."""
        for name in ("sensor", "uplink"):
            if self._alive(self._pid(name)):
                self.signal(name, _signal.SIGKILL)

    # ------------------------------------------------------------------ driver: reading
    def logs(self, name: str = "sensor") -> str:
        if self.units:
            return self.out(f"journalctl -q -o cat --no-pager -u {UNITS[name]}", check=False,
                            timeout=60)
        return self.out(f"cat {self.paths.root}/{name}.log 2>/dev/null", check=False)

    def unit_state(self, name: str = "sensor") -> UnitState:
        if self.units:
            props = dict(line.split("=", 1) for line in self.out(
                f"systemctl show -p ActiveState -p SubState -p MainPID -p StatusText "
                f"-p WatchdogTimestampMonotonic {UNITS[name]}").splitlines() if "=" in line)
            pid = int(props.get("MainPID", "0") or 0)
            st = UnitState(active=props.get("ActiveState") == "active", pid=pid,
                           ready=props.get("SubState") == "running",
                           watchdog=int(props.get("WatchdogTimestampMonotonic", "0") != "0"),
                           detail=json.dumps(props))
        else:
            pid = self._pid(name)
            notes = self.out(f"cat {self.paths.root}/notify.log 2>/dev/null", check=False)
            said = notes.splitlines()
            st = UnitState(active=self._alive(pid), pid=pid,
                           ready=any(m.startswith("READY=1") for m in said) or name != "sensor",
                           watchdog=said.count("WATCHDOG=1"),
                           stopping="STOPPING=1" in said, detail=notes[-500:])
        if st.active and pid:
            status = self.out(f"cat /proc/{pid}/status", check=False)
            f = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if "Uid" in f:
                st.uid = int(f["Uid"].split()[1])
                st.cap_eff = int(f["CapEff"].strip(), 16)
        return st

    def capture_sockets(self, name: str = "sensor") -> set[int]:
        """The inodes of the packet (AF_PACKET) sockets the program holds open: a capture
        that was reopened holds a new one.  Read from /proc, so it needs no log line (the
        units log at WARNING, a reload's success at INFO)."""
        pid = self.unit_state(name).pid
        if not pid:
            return set()
        out = self.out(
            f"for f in /proc/{pid}/fd/*; do readlink $f; done 2>/dev/null; echo --; "
            "cat /proc/net/packet", check=False)
        fds, _, table = out.partition("--")
        held = {int(w[8:-1]) for w in fds.split() if w.startswith("socket:[")}
        packet = {int(row.split()[8]) for row in table.strip().splitlines()[1:]
                  if len(row.split()) > 8 and row.split()[8].isdigit()}
        return held & packet

    def user_id(self, user: str) -> int:
        return int(self.out(f"id -u {user}").strip())

    def file_stat(self, path: str) -> tuple[int, int]:
        """(uid, mode & 0o777) of a file on the board."""
        uid, mode = self.out(f"stat -c '%u %a' {path}").split()
        return int(uid), int(mode, 8)

    def spool(self) -> SpoolSnapshot:
        """Everything in the spool directory, read as one tar."""
        data = self.sh(f"tar -C {self.paths.spool} -cf - .", timeout=120).stdout
        snap = SpoolSnapshot()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                name = m.name.removeprefix("./")
                if not m.isfile():
                    continue
                if name.startswith("quarantine/"):
                    snap.quarantined.append(name)
                elif name.endswith(".tenv") and "/" not in name:
                    fh = tar.extractfile(m)
                    assert fh is not None
                    snap.entries[name] = fh.read()
                elif name.startswith(".tmp-"):
                    snap.temporary.append(name)
                else:
                    fh = tar.extractfile(m)
                    assert fh is not None
                    snap.other[name] = fh.read()
        return snap

    def spool_count(self) -> int:
        return int(self.out(f"ls {self.paths.spool} | grep -c '\\.tenv$' || true").strip()
                   or 0)

    def cpu_seconds(self, name: str = "sensor") -> float:
        """utime + stime of the program so far."""
        pid = self._pid(name)
        st = self.out(f"cat /proc/{pid}/stat; getconf CLK_TCK", check=False).splitlines()
        if len(st) < 2:
            return 0.0
        fields = st[0].rsplit(")", 1)[-1].split()
        return (int(fields[11]) + int(fields[12])) / int(st[1])

    # ------------------------------------------------------------------ driver: network
    def set_link(self, up: bool) -> None:
        self.sh(f"ip link set {self.paths.interface} {'up' if up else 'down'}")

    def firewall_rules(self) -> str:
        return self.out("nft list table inet teiten")

    def doctor(self) -> dict[str, Any]:
        r = self.sh(f"export PATH={PATH}; cd {self.paths.root}; {self.teiten()} doctor --json "
                    f"--config {self.paths.config}", check=False)
        return dict(json.loads(r.stdout))

    def config_check(self, path: str) -> dict[str, Any]:
        r = self.sh(f"export PATH={PATH}; cd /; {self.teiten()} config check --json {path}",
                    check=False)
        return dict(json.loads(r.stdout))

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _wait(cond: Any, timeout: float, what: str, step: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = cond()
            if v:
                return v
            time.sleep(step)
        raise TargetError(f"timed out after {timeout:.0f}s waiting for {what}")
