"""Central settings: `central.toml` for the receiver, and the Mosquitto config renderer.

Strategy: phase one of the two-phase config rule, as on the board.  `load_central(path)`
validates `[receiver]` into a frozen `ReceiverConfig` or raises `CentralConfigError`
naming the key and the fix; nothing is opened here.  `check_client_id` is phase two (it
reads the receiver's certificate).  `render_mosquitto_conf` fills the template in
`central/mosquitto/` so tests, the demo and operators use one configuration.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.envelope import DEFAULT_MAX_SUMMARY_BYTES

MOSQUITTO_DIR = Path(__file__).with_name("mosquitto")
DEFAULT_CLIENT_ID = "central-receiver"  # the receiver certificate's CN (central.ca)
_KEYS = frozenset(
    {
        "host",
        "port",
        "transport",
        "ca",
        "cert",
        "key",
        "insecure",
        "client_id",
        "database",
        "sensors",
        "session_expiry_s",
        "max_summary_bytes",
        "keepalive_s",
    }
)


class CentralConfigError(ValueError):
    """A precise complaint about central.toml."""


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    host: str
    port: int
    database: Path
    sensors: Path
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    client_id: str = DEFAULT_CLIENT_ID
    session_expiry_s: int = 7 * 86400
    max_summary_bytes: int = DEFAULT_MAX_SUMMARY_BYTES
    keepalive_s: int = 30
    transport: str = "tcp"


def _typed(t: Mapping[str, Any], key: str, typ: type, default: Any) -> Any:
    v = t.get(key, default)
    if v is None:
        return None
    if (typ is int and isinstance(v, bool)) or not isinstance(v, typ):
        raise CentralConfigError(f"[receiver] {key}: expected {typ.__name__}, got {v!r}")
    return v


def parse_receiver(t: Mapping[str, Any], *, base_dir: Path | None = None) -> ReceiverConfig:
    unknown = sorted(set(t) - _KEYS)
    if unknown:
        raise CentralConfigError(
            f"[receiver] unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )

    def path(key: str, required: bool) -> Path | None:
        v = _typed(t, key, str, None)
        if v is None:
            if required:
                raise CentralConfigError(f"[receiver] {key} missing (see docs/central.md)")
            return None
        p = Path(v)
        return base_dir / p if base_dir is not None and not p.is_absolute() else p

    insecure = bool(_typed(t, "insecure", bool, False))
    ca, cert, key = path("ca", False), path("cert", False), path("key", False)
    if not insecure and (ca is None or cert is None or key is None):
        raise CentralConfigError(
            "[receiver] mutual TLS needs ca, cert and key (from `teiten central ca init`: "
            "ca.crt, receiver.crt, receiver.key), or insecure = true for a lab broker"
        )
    port = _typed(t, "port", int, 8883)
    if not 1 <= port <= 65535:
        raise CentralConfigError(f"[receiver] port = {port}: a TCP port is 1..65535")
    transport = _typed(t, "transport", str, "tcp")
    if transport not in ("tcp", "websockets"):
        raise CentralConfigError(f"[receiver] transport = {transport!r}: tcp or websockets")
    expiry = _typed(t, "session_expiry_s", int, 7 * 86400)
    if expiry < 60:
        raise CentralConfigError(
            f"[receiver] session_expiry_s = {expiry}: at least 60, or redeliveries are lost"
        )
    db, sensors = path("database", True), path("sensors", True)
    assert db is not None and sensors is not None
    return ReceiverConfig(
        host=_typed(t, "host", str, "127.0.0.1"),
        port=port,
        database=db,
        sensors=sensors,
        ca=ca,
        cert=cert,
        key=key,
        insecure=insecure,
        client_id=_typed(t, "client_id", str, DEFAULT_CLIENT_ID),
        session_expiry_s=expiry,
        max_summary_bytes=_typed(t, "max_summary_bytes", int, DEFAULT_MAX_SUMMARY_BYTES),
        keepalive_s=_typed(t, "keepalive_s", int, 30),
        transport=transport,
    )


def check_client_id(cfg: ReceiverConfig) -> None:
    """Phase two: `client_id` must be the receiver certificate's CN.

    The broker replaces every client id with the certificate's CN
    (`use_username_as_clientid`), so that no client can take over another's connection or
    persistent session; a different `client_id` would never be the session's name."""
    if cfg.insecure or cfg.cert is None:
        return  # a lab broker without TLS: the id is used as configured
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(cfg.cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise CentralConfigError(
            f"[receiver] cert = {cfg.cert}: not a readable PEM certificate ({exc}); use "
            "receiver.crt from `teiten central ca init`"
        ) from None
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(cns) != 1:
        raise CentralConfigError(
            f"[receiver] cert = {cfg.cert}: {len(cns)} CNs, the broker needs exactly one; use "
            "receiver.crt from `teiten central ca init`"
        )
    if cns[0] != cfg.client_id:
        fix = f"set client_id = {cns[0]!r}"
        if cns[0] == DEFAULT_CLIENT_ID:
            fix += " or remove the line"
        raise CentralConfigError(
            f"[receiver] client_id = {cfg.client_id!r}, but the broker names this client "
            f"{cns[0]!r}, its certificate's CN (use_username_as_clientid): {fix}"
        )


def read_central_toml(path: str | Path) -> dict[str, Any]:
    """The parsed central.toml, or CentralConfigError saying what is wrong with the file."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CentralConfigError(f"{p}: no such file; see docs/central.md for an example") from None
    except tomllib.TOMLDecodeError as exc:
        raise CentralConfigError(f"{p}: not valid TOML: {exc}") from None


def load_central(path: str | Path, doc: Mapping[str, Any] | None = None) -> ReceiverConfig:
    """The [receiver] settings of central.toml at `path` (`doc`: that file, already read)."""
    p = Path(path)
    if doc is None:
        doc = read_central_toml(p)
    t = doc.get("receiver")
    if not isinstance(t, dict):
        raise CentralConfigError(f"{p}: no [receiver] table (see docs/central.md)")
    return parse_receiver(t, base_dir=p.parent)


def render_mosquitto_conf(
    *,
    data_dir: Path,
    acl_file: Path,
    cafile: Path,
    certfile: Path,
    keyfile: Path,
    tls_port: int = 8883,
    ws_port: int = 443,
    bind: str = "",
    extra: str = "",
    crlfile: Path | None = None,
    enrol_port: int | None = None,
    enrol_certfile: Path | None = None,
    password_file: Path | None = None,
    enrol_acl_file: Path | None = None,
) -> str:
    """Fill central/mosquitto/mosquitto.conf.  `extra` adds lines (tests: `user root`).

    `crlfile` defaults to `crl.pem` next to `cafile`, where `teiten central ca` writes it.
    With `enrol_port`, the enrolment listener (central/mosquitto/enrol-listener.conf) is
    added: `enrol_certfile` is the server certificate chain (server + CA,
    `central.ca.write_server_chain`), `password_file` the tokens' file the enrolment
    service writes, `enrol_acl_file` a copy of central/mosquitto/enrol.acl."""
    enrol = ""
    if enrol_port is not None:
        if enrol_certfile is None or password_file is None or enrol_acl_file is None:
            raise ValueError("the enrolment listener needs enrol_certfile, password_file "
                             "and enrol_acl_file")
        etpl = string.Template(
            (MOSQUITTO_DIR / "enrol-listener.conf").read_text(encoding="utf-8"))
        enrol = etpl.substitute(
            enrol_port=enrol_port, bind=bind, cafile=str(cafile),
            enrol_certfile=str(enrol_certfile), keyfile=str(keyfile),
            password_file=str(password_file), enrol_acl_file=str(enrol_acl_file),
        )
    tpl = string.Template((MOSQUITTO_DIR / "mosquitto.conf").read_text(encoding="utf-8"))
    return tpl.substitute(
        enrol_listener=enrol,
        data_dir=str(data_dir),
        acl_file=str(acl_file),
        cafile=str(cafile),
        certfile=str(certfile),
        keyfile=str(keyfile),
        crlfile=str(crlfile if crlfile is not None else Path(cafile).with_name("crl.pem")),
        tls_port=tls_port,
        ws_port=ws_port,
        bind=bind,
        extra=extra,
    )


def acl_text() -> str:
    return (MOSQUITTO_DIR / "acl").read_text(encoding="utf-8")


def enrol_acl_text() -> str:
    """The enrolment listener's ACL: a token id may use its own request and reply only."""
    return (MOSQUITTO_DIR / "enrol.acl").read_text(encoding="utf-8")
