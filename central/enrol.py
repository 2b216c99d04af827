"""Zero-touch enrolment and certificate renewal at the central site (docs/enrolment.md).

Strategy: three parts, one SQLite file (the receiver's database, tables of their own).
- `EnrolStore` keeps the one-time tokens (`enrol_tokens`: the token id, the sensor id it
  is for, its expiry, the SHA-256 of its secret and the broker's PBKDF2 line, and once
  used, the keys it enrolled and the certificate), the history of each sensor's signing
  keys (`sensor_keys`, so a replaced board's summaries stay attributed to its key era)
  and the renewals.
- `Enrolment` decides: `enrol(token_id, request)` and `renew(sensor_id, request)` return
  the reply (wire/enrolment.py) after every check: token known, for this sensor id, not
  expired, not used by another key (the same request again gets the same certificate:
  a lost reply must not strand a board), proof of the signing key, CSR for this sensor id;
  it signs with central/ca.py and writes sensors.toml.
- `EnrolService` is the paho edge, as the CN `central-enrol` on the mutual-TLS listener:
  it subscribes to `teiten/v1/enrol/+/request` (published on the enrolment listener) and
  `teiten/v1/+/renew`, answers on the reply topics, keeps the broker's password file equal
  to the live tokens (reloading the broker with SIGHUP when it changes) and runs the clone
  scan (central/clones.py) every `clone_scan_s`.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import logging
import os
import secrets
import signal
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from central.ca import (
    CAError,
    CAFiles,
    atomic_write,
    issue_sensor,
    issued_certificates,
    revoke_serials,
)
from central.fleet import parse_duration
from central.keyring import load_keyring
from wire.enrolment import (
    EnrolFormatError,
    EnrolRequest,
    RenewRequest,
    Reply,
    decode_enrol_request,
    decode_renew_request,
    encode_reply,
    make_token,
    parse_token,
    refused,
    renewed_topic,
    reply_topic,
    secret_digest,
    sensor_of_renew_topic,
    token_of_request_topic,
)
from wire.ids import validate_sensor_id
from wire.keys import KeyringError, public_key_text

log = logging.getLogger("teiten.enrol")

DEFAULT_TOKEN_EXPIRES_S: Final = 7 * 86400
DEFAULT_LIFETIME_S: Final = 90 * 86400
DEFAULT_GRACE_S: Final = 15 * 60
DEFAULT_CLONE_SCAN_S: Final = 300
PBKDF2_ITERATIONS: Final = 101  # Mosquitto 2.0's default; the secret has 130 bits

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS enrol_tokens (
    token_id     TEXT PRIMARY KEY,
    sensor_id    TEXT    NOT NULL,
    secret_sha256 BLOB   NOT NULL,
    passwd_line  TEXT    NOT NULL,     -- the broker's PBKDF2 entry, never the secret
    created_us   INTEGER NOT NULL,
    expires_us   INTEGER NOT NULL,
    replace      INTEGER NOT NULL DEFAULT 0,
    used_us      INTEGER,
    signing_key  TEXT,                 -- ed25519:... it enrolled
    tls_spki_sha256 BLOB,              -- of the CSR's key it certified
    cert_pem     BLOB,
    cert_serial  TEXT,
    refusals     INTEGER NOT NULL DEFAULT 0,
    last_refusal TEXT
);
CREATE INDEX IF NOT EXISTS enrol_tokens_sensor ON enrol_tokens (sensor_id);
CREATE TABLE IF NOT EXISTS sensor_keys (
    sensor_id    TEXT    NOT NULL,
    public_key   TEXT    NOT NULL,
    enrolled_us  INTEGER NOT NULL,
    retired_us   INTEGER,
    token_id     TEXT,
    PRIMARY KEY (sensor_id, public_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS renewals (
    id           INTEGER PRIMARY KEY,
    sensor_id    TEXT    NOT NULL,
    received_us  INTEGER NOT NULL,
    serial       TEXT,
    not_after_us INTEGER,
    tls_spki_sha256 BLOB,
    refused      TEXT
);
"""


class EnrolError(Exception):
    """An enrolment operation that cannot proceed; the message says what to do."""


def _now_us() -> int:
    return time.time_ns() // 1000


def iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- settings
@dataclass(frozen=True, slots=True)
class EnrolConfig:
    """`[enrolment]` of central.toml (docs/enrolment.md)."""

    ca_dir: Path
    password_file: Path
    database: Path
    sensors: Path
    host: str = "127.0.0.1"  # the broker, for the service's own connection
    port: int = 8883  # its mutual-TLS listener
    public_host: str = ""  # what boards connect to (printed with the token)
    enrol_port: int = 8884  # the enrolment listener
    broker_pid_file: Path | None = Path("/run/mosquitto/mosquitto.pid")
    acl_file: Path | None = None  # the broker's site ACL: rewritten after a replacement
    token_expires_s: int = DEFAULT_TOKEN_EXPIRES_S
    cert_lifetime_s: int = DEFAULT_LIFETIME_S
    grace_s: int = DEFAULT_GRACE_S
    clone_scan_s: int = DEFAULT_CLONE_SCAN_S
    keepalive_s: int = 30

    @property
    def files(self) -> CAFiles:
        return CAFiles(self.ca_dir)


_KEYS: Final = frozenset({
    "ca_dir", "password_file", "host", "port", "public_host", "enrol_port",
    "broker_pid_file", "token_expires", "cert_lifetime", "grace", "clone_scan",
    "keepalive_s", "acl_file",
})


def parse_enrolment(
    doc: Mapping[str, Any], *, database: Path, sensors: Path, base_dir: Path | None = None,
    receiver_host: str = "127.0.0.1", receiver_port: int = 8883,
) -> EnrolConfig:
    t = doc.get("enrolment")
    if not isinstance(t, Mapping):
        raise EnrolError("central.toml has no [enrolment] table (docs/enrolment.md)")
    unknown = sorted(set(t) - _KEYS)
    if unknown:
        raise EnrolError(f"[enrolment] unknown key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(_KEYS))}")

    def path(key: str, default: str | None) -> Path | None:
        v = t.get(key, default)
        if v is None or v == "":
            return None
        if not isinstance(v, str):
            raise EnrolError(f"[enrolment] {key}: expected a path")
        p = Path(v)
        return base_dir / p if base_dir is not None and not p.is_absolute() else p

    def dur(key: str, default: int) -> int:
        try:
            return parse_duration(t.get(key, default))
        except ValueError as exc:
            raise EnrolError(f"[enrolment] {key}: {exc}") from None

    def integer(key: str, default: int) -> int:
        v = t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            raise EnrolError(f"[enrolment] {key} = {v!r}: a number 1..65535")
        return v

    ca_dir, pw = path("ca_dir", None), path("password_file", None)
    if ca_dir is None or pw is None:
        raise EnrolError("[enrolment] needs ca_dir (the CA folder) and password_file (the "
                         "enrolment listener's, from `teiten central broker-config`)")
    host = t.get("host", receiver_host)
    public = t.get("public_host", host)
    if not isinstance(host, str) or not isinstance(public, str):
        raise EnrolError("[enrolment] host and public_host are text")
    cfg = EnrolConfig(
        ca_dir=ca_dir, password_file=pw, database=database, sensors=sensors, host=host,
        port=integer("port", receiver_port), public_host=public,
        enrol_port=integer("enrol_port", 8884),
        broker_pid_file=path("broker_pid_file", "/run/mosquitto/mosquitto.pid"),
        acl_file=path("acl_file", None),
        token_expires_s=dur("token_expires", DEFAULT_TOKEN_EXPIRES_S),
        cert_lifetime_s=dur("cert_lifetime", DEFAULT_LIFETIME_S),
        grace_s=dur("grace", DEFAULT_GRACE_S),
        clone_scan_s=dur("clone_scan", DEFAULT_CLONE_SCAN_S),
        keepalive_s=integer("keepalive_s", 30),
    )
    return cfg


def load_enrolment(path: str | Path) -> EnrolConfig:
    from central.config import load_central, read_central_toml

    p = Path(path)
    doc = read_central_toml(p)
    rc = load_central(p, doc)
    return parse_enrolment(doc, database=rc.database, sensors=rc.sensors, base_dir=p.parent,
                           receiver_host=rc.host, receiver_port=rc.port)


# ---------------------------------------------------------------- the store
@dataclass(frozen=True, slots=True)
class Token:
    token_id: str
    sensor_id: str
    secret_sha256: bytes
    passwd_line: str
    created_us: int
    expires_us: int
    replace: bool
    used_us: int | None
    signing_key: str | None
    tls_spki_sha256: bytes | None
    cert_pem: bytes | None
    cert_serial: str | None
    refusals: int
    last_refusal: str | None

    def live_until_us(self, grace_s: int) -> int:
        """Until when the broker lets this token log in (its password entry)."""
        end = self.expires_us if self.used_us is None else min(self.used_us, self.expires_us)
        return end + grace_s * 1_000_000

    def state(self, now_us: int) -> str:
        if self.used_us is not None:
            return "used"
        return "expired" if now_us >= self.expires_us else "pending"


_TOKEN_COLS: Final = (
    "token_id, sensor_id, secret_sha256, passwd_line, created_us, expires_us, replace, "
    "used_us, signing_key, tls_spki_sha256, cert_pem, cert_serial, refusals, last_refusal"
)


def _token(r: tuple[Any, ...]) -> Token:
    return Token(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], bool(r[6]), r[7], r[8],
                 None if r[9] is None else bytes(r[9]), None if r[10] is None else bytes(r[10]),
                 r[11], r[12], r[13])


class EnrolStore:
    """The enrolment tables in the central database (own connection; WAL, FULL sync)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EnrolStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def add_token(self, tok: Token) -> None:
        with self.tx() as db:
            db.execute(
                f"INSERT INTO enrol_tokens ({_TOKEN_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (tok.token_id, tok.sensor_id, tok.secret_sha256, tok.passwd_line,
                 tok.created_us, tok.expires_us, int(tok.replace), None, None, None, None,
                 None, 0, None),
            )

    def token(self, token_id: str) -> Token | None:
        with self._lock:
            r = self._db.execute(f"SELECT {_TOKEN_COLS} FROM enrol_tokens WHERE token_id = ?",
                                 (token_id,)).fetchone()
        return None if r is None else _token(r)

    def tokens(self, sensor_id: str | None = None) -> list[Token]:
        q = f"SELECT {_TOKEN_COLS} FROM enrol_tokens"
        args: tuple[str, ...] = ()
        if sensor_id is not None:
            q, args = q + " WHERE sensor_id = ?", (sensor_id,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY created_us", args).fetchall()
        return [_token(r) for r in rows]

    def refuse(self, token_id: str, reason: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE enrol_tokens SET refusals = refusals + 1, last_refusal = ? "
                       "WHERE token_id = ?", (reason, token_id))

    def mark_used(self, token_id: str, now_us: int, signing_key: str, spki: bytes,
                  cert_pem: bytes, serial: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE enrol_tokens SET used_us = ?, signing_key = ?, tls_spki_sha256 = ?, "
                "cert_pem = ?, cert_serial = ? WHERE token_id = ? AND used_us IS NULL",
                (now_us, signing_key, spki, cert_pem, serial, token_id))

    def record_key(self, sensor_id: str, public_key: str, now_us: int, token_id: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE sensor_keys SET retired_us = ? WHERE sensor_id = ? AND "
                       "retired_us IS NULL AND public_key != ?", (now_us, sensor_id, public_key))
            db.execute("INSERT OR IGNORE INTO sensor_keys (sensor_id, public_key, enrolled_us, "
                       "token_id) VALUES (?,?,?,?)", (sensor_id, public_key, now_us, token_id))

    def key_eras(self) -> dict[str, list[tuple[str, int, int | None]]]:
        """Per sensor: (public key, enrolled_us, retired_us) oldest first."""
        out: dict[str, list[tuple[str, int, int | None]]] = {}
        for sid, key, a, b in self._db.execute(
            "SELECT sensor_id, public_key, enrolled_us, retired_us FROM sensor_keys "
            "ORDER BY sensor_id, enrolled_us"
        ):
            out.setdefault(sid, []).append((key, a, b))
        return out

    def record_renewal(self, sensor_id: str, now_us: int, serial: str | None,
                       not_after_us: int | None, spki: bytes | None, refusal: str | None
                       ) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO renewals (sensor_id, received_us, serial, not_after_us, "
                       "tls_spki_sha256, refused) VALUES (?,?,?,?,?,?)",
                       (sensor_id, now_us, serial, not_after_us, spki, refusal))

    def renewals(self, sensor_id: str) -> list[dict[str, Any]]:
        return [{"received_us": r[0], "serial": r[1], "not_after_us": r[2], "refused": r[3]}
                for r in self._db.execute(
                    "SELECT received_us, serial, not_after_us, refused FROM renewals "
                    "WHERE sensor_id = ? ORDER BY id", (sensor_id,))]


# ---------------------------------------------------------------- broker password file
def passwd_line(token_id: str, secret: str, salt: bytes | None = None) -> str:
    """Mosquitto 2.0's `$7$` entry (PBKDF2-HMAC-SHA512) for username token_id."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode("ascii"), salt, PBKDF2_ITERATIONS)
    return (f"{token_id}:$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def _write_if_changed(path: Path, data: bytes, mode: int) -> bool:
    """Replace `path` with `data` (central.ca.atomic_write); False when it already held them."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, data, mode)
    return True


def sync_password_file(store: EnrolStore, cfg: EnrolConfig, now_us: int | None = None) -> bool:
    """Write the live tokens' entries; reload the broker when the file changed.

    A token's entry lives until its expiry (unused) or its use, plus `grace_s`, so that a
    board whose reply was lost can ask again and a late try gets a reason, not only
    'not authorised'."""
    now = now_us if now_us is not None else _now_us()
    lines = sorted(t.passwd_line for t in store.tokens() if t.live_until_us(cfg.grace_s) > now)
    data = ("".join(line + "\n" for line in lines)).encode()
    lock = cfg.password_file.with_name(f".{cfg.password_file.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # readable by the broker (it drops to user mosquitto); it holds hashes only
        changed = _write_if_changed(cfg.password_file, data, 0o644)
    finally:
        os.close(fd)
    if changed:
        reload_broker(cfg)
    return changed


def reload_broker(cfg: EnrolConfig) -> bool:
    """SIGHUP the broker (re-reads password and ACL files); False if it cannot be found."""
    if cfg.broker_pid_file is None:
        return False
    try:
        pid = int(cfg.broker_pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        log.warning("cannot reload the broker via %s: %s; run `systemctl reload mosquitto`",
                    cfg.broker_pid_file, exc)
        return False
    return True


# ---------------------------------------------------------------- sensors.toml
def set_keyring_entry(path: Path, sensor_id: str, public_key: str, note: str) -> None:
    """Make `[sensors.<id>]` hold exactly this key (not revoked), checked before replacing."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = "[sensors]\n"
    lines = text.splitlines(keepends=True)
    headers = {f"[sensors.{sensor_id}]", f'[sensors."{sensor_id}"]'}
    start = next((i for i, ln in enumerate(lines) if ln.strip() in headers), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].lstrip().startswith("[")), len(lines))
        del lines[start:end]
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    if not any(ln.strip() == "[sensors]" for ln in lines) and not any(
            ln.strip().startswith("[sensors.") for ln in lines):
        lines.append("[sensors]\n")
    note_toml = note.replace("\\", "\\\\").replace('"', '\\"')
    lines.append(f'\n[sensors.{sensor_id}]\npublic_key = "{public_key}"\nnote = "{note_toml}"\n')
    new = "".join(lines)
    tmp = path.with_name(f".{path.name}.check")
    tmp.write_text(new, encoding="utf-8")
    try:
        entry = load_keyring(tmp).get(sensor_id)
    except KeyringError as exc:
        raise EnrolError(f"cannot add {sensor_id} to {path}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    if entry is None or public_key_text(entry.public_key) != public_key or entry.revoked:
        raise EnrolError(f"cannot add {sensor_id} to {path}: the result does not hold its key")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    _write_if_changed(path, new.encode(), mode)


# ---------------------------------------------------------------- decisions
@dataclass(frozen=True, slots=True)
class Issued:
    token: str  # the token text, shown once
    token_id: str
    sensor_id: str
    expires_us: int
    replace: bool


def _spki_sha256(csr_pem: bytes) -> bytes:
    csr = x509.load_pem_x509_csr(csr_pem)
    return hashlib.sha256(csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


class Enrolment:
    """Tokens in, certificates out; every check of docs/enrolment.md."""

    def __init__(self, store: EnrolStore, cfg: EnrolConfig) -> None:
        self.store = store
        self.cfg = cfg

    # ------------------------------------------------------------ tokens
    def new_token(self, sensor_id: str, *, expires_s: int | None = None, replace: bool = False,
                  now_us: int | None = None) -> Issued:
        try:
            validate_sensor_id(sensor_id)
        except ValueError as exc:
            raise EnrolError(str(exc)) from None
        if sensor_id.startswith("central-"):
            raise EnrolError(f"{sensor_id!r}: names starting with central- are the site's own")
        try:
            entry = load_keyring(self.cfg.sensors).get(sensor_id)
        except KeyringError:
            entry = None
        if entry is not None and not replace:
            raise EnrolError(
                f"{sensor_id} is already enrolled; to replace its board run `teiten central "
                f"enroll {sensor_id} --replace` (the old board's certificates are revoked "
                "when the new one enrols)")
        now = now_us if now_us is not None else _now_us()
        text = make_token(secrets.token_bytes(24))
        tid, secret = parse_token(text)
        life = expires_s if expires_s is not None else self.cfg.token_expires_s
        self.store.add_token(Token(tid, sensor_id, secret_digest(secret),
                                   passwd_line(tid, secret), now, now + life * 1_000_000,
                                   replace, None, None, None, None, None, 0, None))
        return Issued(text, tid, sensor_id, now + life * 1_000_000, replace)

    # ------------------------------------------------------------ enrolment
    def enrol(self, token_id: str, data: bytes, now_us: int | None = None) -> Reply:
        now = now_us if now_us is not None else _now_us()
        try:
            req = decode_enrol_request(data)
        except EnrolFormatError as exc:
            return refused(b"\0" * 16, "bad_request", str(exc))
        reply = self._enrol(token_id, req, now)
        if not reply.ok and reply.reason != "token_unknown":
            self.store.refuse(token_id, reply.reason or "")
        log.log(logging.INFO if reply.ok else logging.WARNING, "enrolment of %s with token %s: "
                "%s %s", req.sensor_id, token_id, reply.status, reply.reason or "")
        return reply

    def _enrol(self, token_id: str, req: EnrolRequest, now: int) -> Reply:
        tok = self.store.token(token_id)
        if tok is None:
            return refused(req.nonce, "token_unknown", "no such token at central; ask for a "
                           "new one (`teiten central enroll SENSOR_ID`)")
        if req.sensor_id != tok.sensor_id:
            return refused(req.nonce, "wrong_sensor", f"this token is for another sensor, not "
                           f"{req.sensor_id!r}; check [sensor] id in teiten.toml or ask for a "
                           "token for this id")
        if not req.verify_proof(token_id):
            return refused(req.nonce, "bad_proof", "the proof does not verify with the "
                           "signing key sent")
        try:
            spki = _spki_sha256(req.csr)
        except ValueError as exc:
            return refused(req.nonce, "bad_csr", f"not a PEM certificate request: {exc}")
        key_text = public_key_text(req.signing_key)
        if tok.used_us is not None:
            if tok.signing_key == key_text and tok.tls_spki_sha256 == spki and tok.cert_pem:
                return self._issued(req.nonce, tok.cert_pem, "the same request again: the "
                                    "certificate issued for it")
            return refused(req.nonce, "token_used", f"this token enrolled a board on "
                           f"{iso(tok.used_us)}; a token works once: ask for a new one")
        if now >= tok.expires_us:
            return refused(req.nonce, "token_expired", f"this token expired on "
                           f"{iso(tok.expires_us)}; ask for a new one")
        try:
            pem = issue_sensor(self.cfg.ca_dir, tok.sensor_id, req.csr,
                               lifetime_s=self.cfg.cert_lifetime_s)
        except CAError as exc:
            return refused(req.nonce, "bad_csr", str(exc))
        cert = x509.load_pem_x509_certificate(pem)
        serial = f"{cert.serial_number:X}"
        if tok.replace:
            try:
                revoke_serials(self.cfg.ca_dir, tok.sensor_id, keep={serial},
                               reason="superseded")
                if self.cfg.acl_file is not None:
                    # a `revoke --acl` of the old board denied the name, which is the new
                    # board's too: rewrite the ACL from the record (central.ca.revoked_acl)
                    from central.ca import write_acl
                    from central.config import acl_text

                    write_acl(self.cfg.ca_dir, self.cfg.acl_file, acl_text())
                    reload_broker(self.cfg)
            except (CAError, OSError) as exc:
                log.warning("replacement of %s: %s", tok.sensor_id, exc)
        set_keyring_entry(self.cfg.sensors, tok.sensor_id, key_text,
                          f"enrolled {iso(now)} with token {token_id}")
        self.store.record_key(tok.sensor_id, key_text, now, token_id)
        self.store.mark_used(token_id, now, key_text, spki, pem, serial)
        return self._issued(req.nonce, pem, f"certificate {serial} for {tok.sensor_id}")

    def _issued(self, nonce: bytes, pem: bytes, detail: str) -> Reply:
        cert = x509.load_pem_x509_certificate(pem)
        na = int(cert.not_valid_after_utc.timestamp() * 1_000_000)
        return Reply(nonce, "issued", None, detail, pem, self.cfg.files.ca_crt.read_bytes(), na)

    # ------------------------------------------------------------ renewal
    def renew(self, sensor_id: str, data: bytes, now_us: int | None = None) -> Reply:
        now = now_us if now_us is not None else _now_us()
        try:
            req = decode_renew_request(data)
        except EnrolFormatError as exc:
            self.store.record_renewal(sensor_id, now, None, None, None, "bad_request")
            return refused(b"\0" * 16, "bad_request", str(exc))
        reply = self._renew(sensor_id, req)
        spki = None
        serial = None
        if reply.ok and reply.certificate is not None:
            cert = x509.load_pem_x509_certificate(reply.certificate)
            serial = f"{cert.serial_number:X}"
            spki = _spki_sha256(req.csr)
        self.store.record_renewal(sensor_id, now, serial, reply.not_after_us, spki, reply.reason)
        log.log(logging.INFO if reply.ok else logging.WARNING, "renewal of %s: %s %s",
                sensor_id, reply.status, reply.reason or serial or "")
        return reply

    def _current(self, sensor_id: str, req: RenewRequest) -> str | None:
        """Why the certificate the request presents does not entitle it (None: it does):
        issued by this CA to this sensor, not revoked, not expired, and the proof made
        with its key.  The broker checks the same on 8883, but its WebSockets-TLS
        listener may ignore the CRL (docs/enrolment.md): a replaced or revoked board must
        not get a fresh certificate there."""
        try:
            cert = x509.load_pem_x509_certificate(req.certificate)
            ca = x509.load_pem_x509_certificate(self.cfg.files.ca_crt.read_bytes())
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, OSError):
            return "the certificate presented was not issued by this CA"
        cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cns != [sensor_id]:
            return f"the certificate presented is for {cns}"
        if cert.not_valid_after_utc < dt.datetime.now(dt.UTC):
            return "the certificate presented has expired: enrol again with a new token"
        serial = f"{cert.serial_number:X}"
        entry = next((e for e in issued_certificates(self.cfg.ca_dir)
                      if e["serial"] == serial), None)
        if entry is None or entry["revoked_at"] is not None:
            return f"certificate {serial} is revoked or unknown to the CA"
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not req.verify_proof(pub):
            return "the proof does not verify with the certificate's key"
        return None

    def _renew(self, sensor_id: str, req: RenewRequest) -> Reply:
        if req.sensor_id != sensor_id:
            return refused(req.nonce, "wrong_sensor", "the request names another sensor")
        why = self._current(sensor_id, req)
        if why is not None:
            return refused(req.nonce, "revoked" if "revoked" in why else "key_mismatch", why)
        try:
            entry = load_keyring(self.cfg.sensors).get(sensor_id)
        except KeyringError as exc:
            return refused(req.nonce, "internal_error", f"sensors.toml: {exc}")
        if entry is None:
            return refused(req.nonce, "not_enrolled", f"{sensor_id} is not in sensors.toml")
        if entry.revoked:
            return refused(req.nonce, "revoked", f"{sensor_id} is revoked; re-enrol it")
        try:
            pem = issue_sensor(self.cfg.ca_dir, sensor_id, req.csr,
                               lifetime_s=self.cfg.cert_lifetime_s)
        except CAError as exc:
            return refused(req.nonce, "bad_csr", str(exc))
        return self._issued(req.nonce, pem, "renewed")


# ---------------------------------------------------------------- the MQTT edge
class EnrolService:
    """`teiten central enrold`: answer enrolment and renewal requests until `stop`."""

    def __init__(self, cfg: EnrolConfig, store: EnrolStore) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.cfg = cfg
        self.store = store
        self.enrolment = Enrolment(store, cfg)
        self.connected = threading.Event()
        files = cfg.files
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="central-enrol",
                        protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(files.ca_crt), certfile=str(files.enrol_crt),
                  keyfile=str(files.enrol_key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._client = c

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the enrolment service: %s", rc)
            return
        client.subscribe([("teiten/v1/enrol/+/request", 1), ("teiten/v1/+/renew", 1)])
        log.info("enrolment service connected")
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any
                       ) -> None:
        self.connected.clear()
        log.warning("enrolment service disconnected: %s", rc)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        topic, payload = str(msg.topic), bytes(msg.payload)
        try:
            tid = token_of_request_topic(topic)
            if tid is not None:
                reply = self.enrolment.enrol(tid, payload)
                client.publish(reply_topic(tid), encode_reply(reply), qos=1)
                sync_password_file(self.store, self.cfg)
                return
            sid = sensor_of_renew_topic(topic)
            if sid is not None:
                reply = self.enrolment.renew(sid, payload)
                client.publish(renewed_topic(sid), encode_reply(reply), qos=1)
        except Exception:
            log.exception("enrolment service failed on %s", topic)

    def run(self, stop: threading.Event) -> None:
        from central.clones import scan_database

        sync_password_file(self.store, self.cfg)
        c = self._client
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        # a persistent session: requests published while the service reconnects (a broker
        # restart, a service restart) wait in the broker for it
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 86400
        c.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s,
                        clean_start=False, properties=props)
        c.loop_start()
        next_scan = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_scan:
                    next_scan = now + self.cfg.clone_scan_s
                    try:
                        sync_password_file(self.store, self.cfg)
                        for a in scan_database(self.cfg.database):
                            log.warning("suspected cloned card: %s %s: %s",
                                        a.sensor_id, a.kind, a.detail)
                    except Exception:
                        log.exception("periodic enrolment work failed")
                stop.wait(min(1.0, self.cfg.clone_scan_s))
        finally:
            c.disconnect()
            c.loop_stop()


def toml_snippet(issued: Issued, cfg: EnrolConfig) -> str:
    """What field staff add to teiten.toml on the card (docs/enrolment.md)."""
    from central.ca import ca_fingerprint_of

    return (
        "[enrol]\n"
        f'token = "{issued.token}"\n'
        f'ca_fingerprint = "{ca_fingerprint_of(cfg.ca_dir)}"\n'
        f"port = {cfg.enrol_port}\n"
    )


def pending_enrolments(database: str | Path, now_us: int | None = None) -> list[dict[str, Any]]:
    """Tokens not used yet (pending, or expired unused): `teiten central sensors` lists them."""
    now = now_us if now_us is not None else _now_us()
    try:
        db = sqlite3.connect(Path(database), timeout=30.0)
        try:
            rows = db.execute("SELECT token_id, sensor_id, created_us, expires_us, replace, "
                              "refusals, last_refusal FROM enrol_tokens WHERE used_us IS NULL "
                              "ORDER BY created_us").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []
    return [{"sensor_id": sid, "token_id": tid, "created": iso(c), "expires": iso(e),
             "state": "expired" if now >= e else "pending", "replace": bool(r),
             "refusals": n, "last_refusal": last}
            for tid, sid, c, e, r, n, last in rows]


def print_pending(pending: list[dict[str, Any]]) -> None:
    for p in pending:
        what = "replacement board" if p["replace"] else "board"
        extra = f"; {p['refusals']} refused ({p['last_refusal']})" if p["refusals"] else ""
        print(f"ENROL  {p['sensor_id']}: {what} {p['state']}, token {p['token_id']} expires "
              f"{p['expires']}{extra}")
