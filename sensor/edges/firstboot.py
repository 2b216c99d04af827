"""First boot of a Teiten SD card: `teiten.toml` on the card's FAT partition to a running board.

Strategy: the decisions are pure, the I/O is one thin layer.  Field staff edit one file,
`teiten.toml`, on the FAT partition a laptop can see (label TEITEN).  It is the board's
`sensor.toml` (docs/deployment.md) plus an optional `[board]` table (management network,
SSH).  At every boot `teiten-firstboot.service` runs `teiten firstboot`, which

1. reads `teiten.toml` from the card and checks it as `teiten config check --no-files`
   does (`check_card_config`: pure);
2. compares it with the last good config kept on the data partition and decides what runs
   (`decide`: pure): a valid new file is accepted, an invalid one is refused and the last
   good one keeps running, and with no good config at all the network stays silent;
3. makes the Ed25519 signing key and the TLS key with its CSR on the board, never over an
   existing key (sensor.edges.keys, sensor.edges.certs);
4. writes `teiten-fingerprint.txt` (fingerprint, public key, CSR) or `teiten-error.txt`
   (each bad field and what to do) back to the card and prints the same on the consoles.

The card is reached through `Card`: a mounted directory, or a FAT image or partition read
and written with mtools (`mcopy`), so the board never mounts the partition a laptop edits
and the tests use a real FAT image.  Exit status: 0 a config runs (a refused edit
included), 1 no valid config (the unit fails, so netsetup, capture and uplink, which
require it, do not start), 2 a usage error.
"""

from __future__ import annotations

import enum
import grp
import ipaddress
import os
import pwd
import re
import subprocess
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from sensor import __version__
from sensor.edges.config import ConfigError, Finding, SensorConfig, parse_config
from sensor.edges.durable import write_durably

CARD_CONFIG: Final = "teiten.toml"
CARD_FINGERPRINT: Final = "teiten-fingerprint.txt"
CARD_ERROR: Final = "teiten-error.txt"
CARD_CA: Final = "ca.crt"
CARD_CERT: Final = "sensor.crt"

BOARD_TABLE: Final = "board"
# Tables only first boot reads (never in sensor.toml): [board], and [enrol] with the
# one-time enrolment token (sensor.edges.enrol, docs/enrolment.md).
CARD_ONLY_TABLES: Final = frozenset({BOARD_TABLE, "enrol"})
_BOARD_FIELDS: Final = frozenset(
    {"hostname", "interface", "address", "gateway", "dns", "ntp", "ssh", "ssh_keys", "ssh_from"}
)
_HOSTNAME: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_SSH_KEY: Final = re.compile(r"(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)"
                             r"|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)"
                             r" [A-Za-z0-9+/=]+( .*)?")
_TABLE_HEADER: Final = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_\-\"'.]+?)\s*\]\]?\s*(#.*)?$")


# ------------------------------------------------------------------------------ pure part
@dataclass(frozen=True, slots=True)
class BoardSettings:
    """The `[board]` table: the management side of the board (never the capture side)."""

    hostname: str
    interface: str = "eth0"  # the management interface (uplink, NTP, DNS, SSH)
    address: str = "dhcp"  # "dhcp" or a CIDR such as 192.0.2.2/30
    gateway: str = ""
    dns: tuple[str, ...] = ()
    ntp: tuple[str, ...] = ()
    ssh: bool = False
    ssh_keys: tuple[str, ...] = ()
    ssh_from: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Checked:
    """One teiten.toml, checked: its text, every finding, and what it configures."""

    text: str
    findings: tuple[Finding, ...]
    sensor_toml: str = ""
    config: SensorConfig | None = None
    board: BoardSettings | None = None

    @property
    def ok(self) -> bool:
        return not self.findings and self.config is not None and self.board is not None


def strip_board_table(text: str) -> str:
    """teiten.toml without its `[board]` table(s): the sensor.toml the daemons read."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        m = _TABLE_HEADER.match(line)
        if m is not None:
            name = m.group(1).strip("\"'")
            skipping = name in CARD_ONLY_TABLES or name.split(".")[0] in CARD_ONLY_TABLES
        if not skipping:
            out.append(line)
    return "".join(out)


def _strings(table: Mapping[str, Any], key: str, found: list[Finding]) -> tuple[str, ...]:
    v = table.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        found.append(Finding(f"board.{key}", f"expected a list of strings, got {v!r}"))
        return ()
    return tuple(v)


def parse_board(table: Any, sensor_id: str, capture_interface: str | None,
                topology: str | None) -> tuple[BoardSettings | None, list[Finding]]:
    """Validate `[board]`; every problem is a finding naming the field."""
    found: list[Finding] = []
    if not isinstance(table, Mapping):
        return None, [Finding("board", f"expected a table [board], got {type(table).__name__}")]
    for key in sorted(set(table) - _BOARD_FIELDS):
        found.append(Finding(f"board.{key}", "unknown field; known fields of [board]: "
                             + ", ".join(sorted(_BOARD_FIELDS))))

    def text(key: str, default: str) -> str:
        v = table.get(key, default)
        if not isinstance(v, str):
            found.append(Finding(f"board.{key}", f"expected a string, got {v!r}"))
            return default
        return v

    hostname = text("hostname", sensor_id or "teiten")
    if not _HOSTNAME.fullmatch(hostname):
        found.append(Finding("board.hostname", f"{hostname!r}: use 1-63 of a-z, 0-9 and '-'"))
    default_iface = capture_interface if topology in (None, "routed") and capture_interface \
        else "eth0"
    interface = text("interface", default_iface)
    if topology in ("dedicated", "onlink") and interface == capture_interface:
        found.append(Finding("board.interface", f"{interface} is the capture interface of the "
                             f"{topology} topology, which must stay silent; name the "
                             "management interface (e.g. eth0)"))
    address = text("address", "dhcp")
    if address != "dhcp":
        try:
            ipaddress.ip_interface(address)
            if "/" not in address:
                raise ValueError("no prefix length")
        except ValueError:
            found.append(Finding("board.address", f"{address!r}: write \"dhcp\" or an address "
                                 "with its prefix length, e.g. \"192.0.2.2/30\""))
    gateway = text("gateway", "")
    if gateway:
        try:
            ipaddress.ip_address(gateway)
        except ValueError:
            found.append(Finding("board.gateway", f"{gateway!r} is not an IP address"))
    elif address != "dhcp":
        found.append(Finding("board.gateway", "a static address needs a gateway (the upstream "
                             "router's address), e.g. gateway = \"192.0.2.1\""))
    dns = _strings(table, "dns", found)
    for i, d in enumerate(dns):
        try:
            ipaddress.ip_address(d)
        except ValueError:
            found.append(Finding(f"board.dns[{i}]", f"{d!r} is not an IP address"))
    ntp = _strings(table, "ntp", found)
    ssh = table.get("ssh", False)
    if not isinstance(ssh, bool):
        found.append(Finding("board.ssh", f"expected true or false, got {ssh!r}"))
        ssh = False
    ssh_keys = _strings(table, "ssh_keys", found)
    for i, k in enumerate(ssh_keys):
        if not _SSH_KEY.fullmatch(k.strip()):
            found.append(Finding(f"board.ssh_keys[{i}]", "not an OpenSSH public key line "
                                 "(ssh-ed25519 or ecdsa, the text of your id_ed25519.pub); "
                                 "RSA keys and passwords are not accepted"))
    ssh_from = _strings(table, "ssh_from", found)
    for i, b in enumerate(ssh_from):
        try:
            ipaddress.ip_network(b, strict=True)
        except ValueError:
            found.append(Finding(f"board.ssh_from[{i}]", f"{b!r} is not a CIDR block such as "
                                 "192.0.2.0/28 (the management block allowed to connect)"))
    if ssh and (not ssh_keys or not ssh_from):
        found.append(Finding("board.ssh", "SSH needs ssh_keys (public keys only, no "
                             "passwords) and ssh_from (the management block); give both or "
                             "set ssh = false"))
    if found:
        return None, found
    return BoardSettings(hostname=hostname, interface=interface, address=address,
                         gateway=gateway, dns=dns, ntp=ntp, ssh=ssh, ssh_keys=ssh_keys,
                         ssh_from=ssh_from), []


def check_card_config(text: str, *, base_dir: Path | None = None,
                      source: str = CARD_CONFIG) -> Checked:
    """Check a teiten.toml as `teiten config check --no-files` does, plus `[board]`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return Checked(text, (Finding("file", f"not valid TOML: {exc}"),))
    sensor_toml = strip_board_table(text)
    found: list[Finding] = []
    try:
        sensor_doc = tomllib.loads(sensor_toml)
    except tomllib.TOMLDecodeError as exc:
        sensor_doc = {}
        found.append(Finding("board", f"cannot be separated from the rest ({exc}); keep the "
                             "[board] table as plain `key = value` lines"))
    if {k: v for k, v in doc.items() if k not in CARD_ONLY_TABLES} != sensor_doc:
        found.append(Finding("board", "cannot be separated from the rest; keep the [board] "
                             "table as plain `key = value` lines under one [board] header"))
    config: SensorConfig | None = None
    try:
        config = parse_config(sensor_doc, base_dir=base_dir, source=source)
    except ConfigError as exc:
        found.extend(exc.findings)
    sensor = doc.get("sensor", {})
    capture = doc.get("capture", {})
    sensor_id = sensor.get("id", "") if isinstance(sensor, Mapping) else ""
    board, board_found = parse_board(
        doc.get(BOARD_TABLE, {}), sensor_id if isinstance(sensor_id, str) else "",
        config.capture.interface if config else (
            capture.get("interface", "eth0") if isinstance(capture, Mapping) else None),
        config.topology if config else None,
    )
    found.extend(board_found)
    from sensor.edges.enrol import parse_enrol_table

    found.extend(parse_enrol_table(doc.get("enrol"))[1])
    return Checked(text, tuple(found), sensor_toml, config, board)


class Outcome(enum.Enum):
    FIRST = "first"  # nothing ran before; the card's config is accepted
    UPDATED = "updated"  # the card holds a new, valid config: accepted
    UNCHANGED = "unchanged"  # the card holds the config that already runs (or none)
    KEPT = "kept"  # the card's config is invalid: the last good one keeps running
    SILENT = "silent"  # no valid config at all: capture and uplink stay off


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    run: Checked | None  # the config that runs from now on
    store: bool  # keep `run` as the new last good config
    error: str | None  # teiten-error.txt; None removes a stale one

    @property
    def network(self) -> bool:
        return self.run is not None


def decide(card: Checked | None, last_good: Checked | None) -> Decision:
    """What runs, given the card's teiten.toml (None: absent) and the last good one."""
    good = last_good if last_good is not None and last_good.ok else None
    if card is None:
        if good is not None:
            return Decision(Outcome.UNCHANGED, good, False, None)
        return Decision(Outcome.SILENT, None, False, render_error(
            (Finding("file", f"no {CARD_CONFIG} on the card's TEITEN partition; copy the "
                     f"example {CARD_CONFIG} there and fill it in"),), kept=False))
    if card.ok:
        if good is not None and good.text == card.text:
            return Decision(Outcome.UNCHANGED, good, False, None)
        return Decision(Outcome.FIRST if good is None else Outcome.UPDATED, card, True, None)
    return Decision(Outcome.KEPT if good is not None else Outcome.SILENT, good, False,
                    render_error(card.findings, kept=good is not None))


def render_error(findings: Sequence[Finding], *, kept: bool) -> str:
    """teiten-error.txt: each field, what is wrong, what to do, and what the board does now."""
    lines = [f"TEITEN: {CARD_CONFIG} on this card was NOT accepted ({len(findings)} problem(s)).",
             ""]
    lines += [f"  {f.field}: {f.reason}" for f in findings]
    lines += ["", f"What to do: fix each field above in {CARD_CONFIG} on the card's TEITEN "
              "partition, put the card back and power the board on again. "
              "Details of every field: docs/flashing.md."]
    if kept:
        lines.append("Now: the board keeps running its last good configuration, unchanged.")
    else:
        lines.append("Now: the board captures nothing and sends nothing (the firewall drops "
                     "everything) until the configuration is fixed.")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Identity:
    sensor_id: str
    fingerprint: str
    public_key: str
    csr: str  # PEM, empty without an [uplink] table
    created: tuple[str, ...]  # keys made at this boot


def render_fingerprint(ident: Identity, *, version: str = __version__) -> str:
    """teiten-fingerprint.txt: what central needs to enrol this board."""
    lines = [
        f"TEITEN sensor {ident.sensor_id} (teiten {version})",
        "",
        f"signing-key fingerprint: {ident.fingerprint}",
        f"public key: {ident.public_key}",
        "",
        "Read the fingerprint to the central site; they enrol the public key in sensors.toml.",
    ]
    if ident.csr:
        lines += ["Send the certificate request below to the central site "
                  "(`teiten central issue`), and put the sensor.crt and ca.crt they send "
                  "back on this partition.", "", ident.csr.rstrip("\n")]
    return "\n".join(lines) + "\n"


def render_network(board: BoardSettings) -> str:
    """systemd-networkd .network for the management interface."""
    lines = ["# written by teiten firstboot from [board] in teiten.toml", "[Match]",
             f"Name={board.interface}", "", "[Network]"]
    if board.address == "dhcp":
        lines.append("DHCP=ipv4")
    else:
        lines += [f"Address={board.address}", f"Gateway={board.gateway}"]
    lines += [f"DNS={d}" for d in board.dns]
    lines += [f"NTP={n}" for n in board.ntp]
    lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no", "LLMNR=no", "MulticastDNS=no"]
    return "\n".join(lines) + "\n"


def render_ssh_rules(board: BoardSettings) -> str:
    """nft commands that open TCP 22 to the management block only (after netsetup's set)."""
    lines = ["# written by teiten firstboot: SSH from [board] ssh_from only"]
    for block in board.ssh_from:
        fam = "ip" if ipaddress.ip_network(block).version == 4 else "ip6"
        lines.append(f'insert rule inet teiten input iifname "{board.interface}" '
                     f"{fam} saddr {block} tcp dport 22 accept")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the card
class Card(Protocol):
    """The FAT partition a laptop edits: a few small files by name."""

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, data: bytes) -> None: ...

    def remove(self, name: str) -> None: ...


class CardError(Exception):
    """The card's FAT partition could not be read or written."""


class DirectoryCard:
    """A mounted FAT partition (or any directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        write_durably(self.path / name, data)

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


class MtoolsCard:
    """A FAT image or block device, read and written with mtools: never mounted."""

    def __init__(self, image: str, offset: int = 0) -> None:
        self.target = f"{image}@@{offset}" if offset else image
        self.env = dict(os.environ, MTOOLS_SKIP_CHECK="1", MTOOLS_NO_VFAT="0")

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(args, capture_output=True, env=self.env, timeout=60,
                                  check=False)
        except FileNotFoundError:
            raise CardError(f"{args[0]} not found: install mtools") from None

    def read(self, name: str) -> bytes | None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "f"
            r = self._run("mcopy", "-n", "-i", self.target, f"::{name}", str(out))
            if r.returncode != 0:
                if b"not found" in r.stderr:
                    return None
                raise CardError(f"cannot read {name} from {self.target}: "
                                f"{r.stderr.decode(errors='replace').strip()}")
            return out.read_bytes()

    def write(self, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "f"
            src.write_bytes(data)
            r = self._run("mcopy", "-o", "-i", self.target, str(src), f"::{name}")
            if r.returncode != 0:
                raise CardError(f"cannot write {name} to {self.target}: "
                                f"{r.stderr.decode(errors='replace').strip()}")
        self._run("sync")

    def remove(self, name: str) -> None:
        r = self._run("mdel", "-i", self.target, f"::{name}")
        if r.returncode != 0 and b"not found" not in r.stderr:
            raise CardError(f"cannot remove {name} from {self.target}: "
                            f"{r.stderr.decode(errors='replace').strip()}")


def open_card(spec: str) -> Card:
    """`DIR` (mounted), or `IMAGE_OR_DEVICE[@@OFFSET]` (mtools)."""
    path, _, offset = spec.partition("@@")
    if Path(path).is_dir():
        return DirectoryCard(Path(path))
    return MtoolsCard(path, int(offset or 0))


# ------------------------------------------------------------------------------ the board
@dataclass(frozen=True, slots=True)
class BoardPaths:
    """Where first boot writes on the board (all on the data partition or in /run)."""

    etc: Path = Path("/etc/teiten")  # a link to /var/lib/teiten/etc in the image
    run: Path = Path("/run")
    ssh_dir: Path = Path("/var/lib/teiten/ssh")
    chown: bool = True  # hand keys to the service users (off in tests without the users)

    @property
    def last_good(self) -> Path:
        return self.etc / CARD_CONFIG

    @property
    def sensor_toml(self) -> Path:
        return self.etc / "sensor.toml"

    @property
    def csr(self) -> Path:
        return self.etc / "sensor.csr"


def _chown(path: Path, user: str, group: str, paths: BoardPaths) -> None:
    if paths.chown:
        os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_bytes() == data:
        return
    write_durably(path, data, mode=mode, exact_mode=True)


def make_identity(cfg: SensorConfig, paths: BoardPaths) -> Identity:
    """The signing key and the TLS key + CSR, made only where none exists yet."""
    # cryptography (about 0.2 s) is loaded only on the boots that make or read keys
    from sensor.edges.certs import make_csr
    from sensor.edges.keys import generate_key, load_private_key
    from wire.keys import fingerprint, public_key_text

    created: list[str] = []
    cfg.key.parent.mkdir(parents=True, exist_ok=True)
    if not cfg.key.exists():
        generate_key(cfg.key)
        created.append(str(cfg.key))
        _chown(cfg.key, "teiten", "teiten", paths)
    pub = load_private_key(cfg.key).public_key()
    csr = ""
    tls_key: Path | None = getattr(cfg.uplink, "key", None)
    if tls_key is not None:
        tls_key.parent.mkdir(parents=True, exist_ok=True)
        if not tls_key.exists() or not paths.csr.exists():
            if not tls_key.exists():
                created.append(str(tls_key))
            pem = make_csr(tls_key, cfg.sensor_id)
            _chown(tls_key, "teiten-uplink", "teiten", paths)
            _write(paths.csr, pem)
        csr = paths.csr.read_text()
    return Identity(cfg.sensor_id, fingerprint(pub), public_key_text(pub), csr, tuple(created))


def install_certificates(card: Card, cfg: SensorConfig) -> list[Finding]:
    """Copy ca.crt and sensor.crt from the card where [uplink] expects them."""
    # cryptography, only when the card carries certificates
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from sensor.edges.certs import load_tls_key

    found: list[Finding] = []
    up = cfg.uplink
    if up is None:
        return found
    targets = ((CARD_CA, getattr(up, "ca", None)), (CARD_CERT, getattr(up, "cert", None)))
    for name, target in targets:
        data = card.read(name)
        if data is None or target is None:
            continue
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            found.append(Finding(name, "not a PEM certificate; copy the file central sent "
                                 "unchanged"))
            continue
        if name == CARD_CERT and up.key is not None and Path(up.key).exists():
            mine = load_tls_key(up.key).public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            theirs = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            if mine != theirs:
                found.append(Finding(name, "issued for another key, not this board's TLS key; "
                                     f"have central issue it from the request in "
                                     f"{CARD_FINGERPRINT}"))
                continue
        _write(Path(target), data)
    return found


def _configure_board(board: BoardSettings, paths: BoardPaths) -> None:
    net = paths.run / "systemd" / "network" / "10-teiten-management.network"
    _write(net, render_network(board).encode())
    flag = paths.run / "teiten" / "ssh-enabled"
    rules = paths.run / "teiten" / "ssh.nft"
    if not board.ssh:
        flag.unlink(missing_ok=True)
        rules.unlink(missing_ok=True)
        return
    paths.ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # in /run: sshd's StrictModes wants a root-owned path (/var/lib/teiten is teiten's)
    _write(paths.run / "teiten" / "authorized_keys",
           ("\n".join(board.ssh_keys) + "\n").encode(), 0o600)
    host_key = paths.ssh_dir / "ssh_host_ed25519_key"
    if not host_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", board.hostname,
                        "-f", str(host_key)], check=True, timeout=60)
    _write(rules, render_ssh_rules(board).encode())
    _write(flag, b"1\n")


@dataclass(frozen=True, slots=True)
class Report:
    decision: Decision
    identity: Identity | None
    messages: tuple[str, ...]


def _read_last_good(paths: BoardPaths) -> Checked | None:
    try:
        text = paths.last_good.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return check_card_config(text, base_dir=paths.etc, source=str(paths.last_good))


def run_firstboot(card: Card, paths: BoardPaths) -> Report:
    """The whole first-boot step: decide, make keys, write the card. Raises CardError."""
    from sensor.edges.keys import KeyFileError  # with the key code, after cryptography

    raw = card.read(CARD_CONFIG)
    card_checked: Checked | None = None
    if raw is not None:
        try:
            card_checked = check_card_config(raw.decode("utf-8"), base_dir=paths.etc)
        except UnicodeDecodeError:
            card_checked = Checked("", (Finding("file", f"{CARD_CONFIG} is not UTF-8 text; "
                                                "save it as UTF-8"),))
    decision = decide(card_checked, _read_last_good(paths))
    ident: Identity | None = None
    if decision.run is not None and decision.run.config is not None:
        cfg = decision.run.config
        try:
            ident = make_identity(cfg, paths)
        except (KeyFileError, OSError) as exc:
            return _refuse(card, decision, paths, Finding("sensor.key", f"{exc}; point the key "
                           "paths at /var/lib/teiten or /etc/teiten"))
        problems = install_certificates(card, cfg)
        if decision.store:
            paths.etc.mkdir(parents=True, exist_ok=True)
            _write(paths.sensor_toml, decision.run.sensor_toml.encode(), 0o640)
            _chown(paths.sensor_toml, "root", "teiten", paths)
            _write(paths.last_good, decision.run.text.encode(), 0o600)
        assert decision.run.board is not None
        _configure_board(decision.run.board, paths)
        fp = render_fingerprint(ident)
        if card.read(CARD_FINGERPRINT) != fp.encode():
            card.write(CARD_FINGERPRINT, fp.encode())
        error = decision.error
        if problems:
            error = (error or "") + render_error(problems, kept=True)
    else:
        error = decision.error
    if error is not None:
        card.write(CARD_ERROR, error.encode())
    elif card.read(CARD_ERROR) is not None:
        card.remove(CARD_ERROR)
    return Report(decision, ident, tuple(_messages(decision, ident, error)))


def _refuse(card: Card, decision: Decision, paths: BoardPaths, finding: Finding) -> Report:
    error = render_error((finding,), kept=False)
    card.write(CARD_ERROR, error.encode())
    silent = Decision(Outcome.SILENT, None, False, error)
    return Report(silent, None, tuple(_messages(silent, None, error)))


def _messages(decision: Decision, ident: Identity | None, error: str | None) -> list[str]:
    out = [f"teiten firstboot: {decision.outcome.value}"]
    if ident is not None:
        out.append(f"teiten sensor {ident.sensor_id}: signing-key fingerprint "
                   f"{ident.fingerprint}")
        out += [f"teiten firstboot: made {c}" for c in ident.created]
    if error is not None:
        out += [f"teiten firstboot: {line}" for line in error.splitlines() if line.strip()]
    return out


# ------------------------------------------------------------------------------ the CLI
