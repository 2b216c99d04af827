"""Uplink settings: the `[uplink]` table of `sensor.toml`, validated into a frozen record.

Strategy: phase one of the two-phase config rule.  `parse_uplink(table)` checks every key
and type and returns an immutable `UplinkConfig`, or raises `UplinkConfigError` naming the
key, what was wrong and what to write instead.  Nothing here opens files or sockets: the
certificate paths are checked for existence only by `UplinkConfig.check_files()`, which the
command calls just before binding resources.

Mutual TLS is the default.  Plain TCP needs an explicit `insecure = true`, and then the
TLS paths must be absent so a half-configured board cannot silently fall back to cleartext.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.ids import validate_sensor_id

_HOST = re.compile(r"^[A-Za-z0-9.\-:\[\]]{1,253}$")
_KNOWN_KEYS = frozenset(
    {
        "sensor_id",
        "spool",
        "host",
        "port",
        "ws_port",
        "ws_path",
        "ca",
        "cert",
        "key",
        "insecure",
        "max_in_flight",
        "ack_timeout_s",
        "backoff_min_s",
        "backoff_max_s",
        "health_interval_s",
        "keepalive_s",
        "connect_timeout_s",
        "ws_after_failures",
        "renew_before_s",
        "renew_rotate_key",
    }
)


class UplinkConfigError(ValueError):
    """A precise, actionable complaint about the `[uplink]` table."""


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    sensor_id: str
    spool: Path
    host: str
    port: int = 8883
    ws_port: int | None = 443  # None: no WebSockets fallback
    ws_path: str = "/mqtt"
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    max_in_flight: int = 8
    ack_timeout_s: float = 120.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 300.0
    health_interval_s: float = 300.0
    keepalive_s: int = 60
    connect_timeout_s: float = 10.0
    # consecutive failures on the primary port before the WebSockets port is tried
    ws_after_failures: int = 1
    # renew the client certificate this long before it expires (docs/enrolment.md);
    # None: when a third of its lifetime is left
    renew_before_s: float | None = None
    # renew with a fresh TLS key (made on the board) instead of the current one
    renew_rotate_key: bool = False

    def check_files(self) -> None:
        """Phase two's first step: the TLS files must exist and be readable."""
        for name in ("ca", "cert", "key"):
            p: Path | None = getattr(self, name)
            if p is None:
                continue
            if not p.is_file():
                raise UplinkConfigError(
                    f"[uplink] {name} = {str(p)!r}: no such file; "
                    + _HINTS.get(name, "check the path")
                )


_HINTS = {
    "ca": "copy the central CA certificate (ca.crt) from the central site",
    "cert": "run `teiten csr` on the board, have central run `teiten central issue`, "
    "and copy the certificate back",
    "key": "run `teiten csr` on the board to create the TLS key and a request",
}


def _get(table: Mapping[str, Any], key: str, typ: type | tuple[type, ...], default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    # bool is an int subclass: reject `port = true` explicitly
    if (
        isinstance(value, bool)
        and typ is not bool
        and bool not in (typ if isinstance(typ, tuple) else (typ,))
    ):
        raise UplinkConfigError(f"[uplink] {key}: expected a number, got a boolean")
    if not isinstance(value, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise UplinkConfigError(
            f"[uplink] {key}: expected {names}, got {type(value).__name__} ({value!r})"
        )
    return value


def _port(table: Mapping[str, Any], key: str, default: int | None) -> int | None:
    v = _get(table, key, int, default)
    if v is None:
        return None
    if key == "ws_port" and v == 0:
        return None
    if not 1 <= v <= 65535:
        raise UplinkConfigError(f"[uplink] {key} = {v}: a TCP port is 1..65535")
    return int(v)


def _positive(table: Mapping[str, Any], key: str, default: float) -> float:
    v = float(_get(table, key, (int, float), default))
    if not v > 0:
        raise UplinkConfigError(f"[uplink] {key} = {v}: must be greater than 0")
    return v


def _path(table: Mapping[str, Any], key: str, base: Path | None) -> Path | None:
    v = _get(table, key, str, None)
    if v is None:
        return None
    if not v:
        raise UplinkConfigError(f"[uplink] {key}: empty path")
    p = Path(v)
    if base is not None and not p.is_absolute():
        p = base / p
    return p


def parse_uplink(
    table: Mapping[str, Any],
    *,
    sensor_id: str | None = None,
    spool: Path | str | None = None,
    base_dir: Path | None = None,
) -> UplinkConfig:
    """Validate an `[uplink]` table.

    `sensor_id` and `spool` usually come from the sensor's own tables (`[sensor] id`,
    `[spool] path`); a value in `[uplink]` overrides them.  Relative paths are resolved
    against `base_dir` (the config file's folder) when it is given.
    """
    unknown = sorted(set(table) - _KNOWN_KEYS)
    if unknown:
        raise UplinkConfigError(
            f"[uplink] unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KEYS))}"
        )
    sid = _get(table, "sensor_id", str, sensor_id)
    if not sid:
        raise UplinkConfigError("[uplink] sensor_id missing: set [sensor] id or [uplink] sensor_id")

    try:
        validate_sensor_id(sid)
    except ValueError as exc:
        raise UplinkConfigError(f"[uplink] sensor id {sid!r}: {exc}") from exc
    spool_v = _get(table, "spool", str, None)
    spool_p = Path(spool_v) if spool_v else (Path(spool) if spool is not None else None)
    if spool_p is None:
        raise UplinkConfigError("[uplink] spool missing: set [spool] path or [uplink] spool")
    if base_dir is not None and not spool_p.is_absolute():
        spool_p = base_dir / spool_p

    host = _get(table, "host", str, None)
    if not host:
        raise UplinkConfigError("[uplink] host missing: the central broker's name or address")
    if not _HOST.match(host):
        raise UplinkConfigError(f"[uplink] host = {host!r}: not a host name or address")
    insecure = bool(_get(table, "insecure", bool, False))
    ca = _path(table, "ca", base_dir)
    cert = _path(table, "cert", base_dir)
    key = _path(table, "key", base_dir)
    if insecure:
        if ca or cert or key:
            raise UplinkConfigError(
                "[uplink] insecure = true with ca/cert/key set: remove `insecure` to use "
                "mutual TLS, or remove the TLS paths to use plain TCP"
            )
    else:
        missing = [n for n, v in (("ca", ca), ("cert", cert), ("key", key)) if v is None]
        if missing:
            raise UplinkConfigError(
                f"[uplink] mutual TLS needs {', '.join(missing)}; set them "
                "(see docs/central.md), or set insecure = true for a lab broker"
            )
    ws_path = _get(table, "ws_path", str, "/mqtt")
    if not ws_path.startswith("/"):
        raise UplinkConfigError(f"[uplink] ws_path = {ws_path!r}: must start with '/'")
    max_in_flight = _get(table, "max_in_flight", int, 8)
    if not 1 <= max_in_flight <= 1000:
        raise UplinkConfigError(f"[uplink] max_in_flight = {max_in_flight}: use 1..1000")
    backoff_min = _positive(table, "backoff_min_s", 1.0)
    backoff_max = _positive(table, "backoff_max_s", 300.0)
    if backoff_max < backoff_min:
        raise UplinkConfigError(
            f"[uplink] backoff_max_s = {backoff_max} is below backoff_min_s = {backoff_min}"
        )
    keepalive = _get(table, "keepalive_s", int, 60)
    if not 5 <= keepalive <= 65535:
        raise UplinkConfigError(f"[uplink] keepalive_s = {keepalive}: use 5..65535")
    ws_after = _get(table, "ws_after_failures", int, 1)
    if ws_after < 1:
        raise UplinkConfigError(f"[uplink] ws_after_failures = {ws_after}: must be at least 1")
    return UplinkConfig(
        sensor_id=sid,
        spool=spool_p,
        host=host,
        port=_port(table, "port", 8883) or 8883,
        ws_port=_port(table, "ws_port", 443),
        ws_path=ws_path,
        ca=ca,
        cert=cert,
        key=key,
        insecure=insecure,
        max_in_flight=max_in_flight,
        ack_timeout_s=_positive(table, "ack_timeout_s", 120.0),
        backoff_min_s=backoff_min,
        backoff_max_s=backoff_max,
        health_interval_s=_positive(table, "health_interval_s", 300.0),
        keepalive_s=keepalive,
        connect_timeout_s=_positive(table, "connect_timeout_s", 10.0),
        ws_after_failures=ws_after,
        renew_before_s=(None if "renew_before_s" not in table
                        else _positive(table, "renew_before_s", 1.0)),
        renew_rotate_key=bool(_get(table, "renew_rotate_key", bool, False)),
    )


def load_uplink(path: Path | str) -> UplinkConfig:
    """Read `sensor.toml` and validate its `[uplink]` table (with `[sensor] id`, `[spool] path`)."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UplinkConfigError(f"{p}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UplinkConfigError(f"{p}: not valid TOML: {exc}") from exc
    table = doc.get("uplink")
    if not isinstance(table, dict):
        raise UplinkConfigError(f"{p}: no [uplink] table; see board/rpi for an example")
    sensor = doc.get("sensor", {})
    spool = doc.get("spool", {})
    sid = sensor.get("id") if isinstance(sensor, dict) else None
    spool_path = None
    if isinstance(spool, dict):
        spool_path = spool.get("path") or spool.get("dir")
    return parse_uplink(
        table,
        sensor_id=sid if isinstance(sid, str) else None,
        spool=spool_path if isinstance(spool_path, str) else None,
        base_dir=p.parent,
    )
