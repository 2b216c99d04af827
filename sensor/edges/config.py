"""The board's configuration: `/etc/teiten/sensor.toml`, validated into frozen records.

Strategy: two phases (see docs/deployment.md).  Phase one, `parse_config(doc)`, is pure: it
checks every table, key, type and range, and collects *every* problem as a `Finding`
(`field`, `reason`) before raising one `ConfigError`, so an operator fixes a config in one
round instead of one error per restart.  The `[uplink]` table is validated by
`sensor.edges.uplink_config.parse_uplink` (one owner per table).  Phase two,
`SensorConfig.check_files()`, looks at the world (the signing key and the uplink's TLS
files exist) just before the daemon binds resources; `teiten config check` runs both phases.

Phase one also refuses what would crash `teiten run` or blind the board later: non-finite
numbers (TOML allows nan and inf) and numbers outside each field's documented range, darknet
blocks that are not dark (sensor.core.darkblock: the IANA special-purpose registries, and a
size bound), exclusions that remove a whole block, and an `extra_bpf` that libpcap does not
compile or that could widen the filter (sensor.core.bpf; compiled with libpcap, no capture
opened).  What is only doubtful (a private-use darknet, which a lab may route) is a
*warning*: the config is valid and `SensorConfig.warnings` says why.

Defaults fit a board with one Ethernet port (`routed`): headers only (256-byte snap
length), an 8 MiB capture buffer, the hour as the bucket.  `[test] bucket_seconds` is the
only way to get a shorter bucket, and it is refused unless it divides an hour.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sensor.core.bpf import check_extra, darknet_filter
from sensor.core.darkblock import fully_excluded, judge
from sensor.core.limits import HOUR, Limits
from sensor.edges.filtercheck import filter_problems
from sensor.edges.uplink_config import UplinkConfigError, parse_uplink
from wire.ids import validate_sensor_id
from wire.summary import MAX_DESTINATION_ROWS, MAX_SOURCE_ROWS

DEFAULT_PATH: Final = Path("/etc/teiten/sensor.toml")
TOPOLOGIES: Final = ("routed", "dedicated", "onlink")
_IFNAME: Final = re.compile(r"^[A-Za-z0-9_.:@\-]{1,15}$")
MAX_BUFFER_BYTES: Final = 1 << 30  # 1 GiB; libpcap's pcap_set_buffer_size takes an int

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem in a config: the dotted field name and what to do about it."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class ConfigError(ValueError):
    """Every problem found in a config; `findings` names each field."""

    def __init__(self, findings: list[Finding], source: str = "config") -> None:
        self.findings = findings
        self.source = source
        super().__init__(
            f"{source}: {len(findings)} problem(s):\n" + "\n".join(f"  {f}" for f in findings)
        )


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    interface: str = "eth0"
    darknet: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    snaplen: int = 256
    buffer_bytes: int = 8 << 20
    extra_bpf: str = ""
    timeout_ms: int = 250
    reopen_min_s: float = 1.0
    reopen_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    path: Path = Path("/var/lib/teiten/spool")
    max_bytes: int = 256 << 20
    state: Path | None = None  # sequence state; default SPOOL/../sequence.state

    @property
    def state_path(self) -> Path:
        return self.state if self.state is not None else self.path.parent / "sequence.state"


@dataclass(frozen=True, slots=True)
class TimeConfig:
    wait_for_sync_s: float = 600.0  # 0: never wait, mark summaries unsynchronised
    close_grace_s: float = 5.0  # a bucket closes this long after it ends
    step_threshold_s: float = 2.0  # a wall-vs-monotonic jump above this is a clock step


@dataclass(frozen=True, slots=True)
class ResponderConfig:
    """The onlink ARP/NDP responder; never runs in `routed` or `dedicated`."""

    enabled: bool = False
    rate_per_s: float = 20.0
    burst: int = 40


@dataclass(frozen=True, slots=True)
class TestConfig:
    """Test-only settings; production never sets them."""

    bucket_seconds: int = HOUR
    clock_offset_file: Path | None = None  # a file holding seconds to add to the clock


@dataclass(frozen=True, slots=True)
class SensorConfig:
    sensor_id: str
    topology: str
    key: Path
    capture: CaptureConfig
    spool: SpoolConfig
    limits: Limits
    time: TimeConfig
    responder: ResponderConfig
    uplink: Any | None  # sensor.edges.uplink_config.UplinkConfig, when an [uplink] table is present
    test: TestConfig = field(default_factory=TestConfig)
    source: Path | None = None
    warnings: tuple[Finding, ...] = ()  # valid, but worth a look (e.g. a private darknet)

    @property
    def bucket_seconds(self) -> int:
        return self.test.bucket_seconds

    def bpf(self) -> str:

        return darknet_filter(
            list(self.capture.darknet), list(self.capture.exclude),
            self.capture.extra_bpf or None,
        )

    def check_files(self) -> list[Finding]:
        """Phase two's first step: the files the daemon will open exist and are readable."""
        found: list[Finding] = []
        if not self.key.is_file():
            found.append(Finding(
                "sensor.key",
                f"{self.key}: no such file; create the signing key with "
                "`teiten keygen` (or copy the enrolled one) and point `key` at it",
            ))
        elif not os.access(self.key, os.R_OK):
            found.append(Finding(
                "sensor.key",
                f"{self.key}: not readable by this user; `chown teiten {self.key}` and "
                "`chmod 600` it",
            ))
        if self.uplink is not None:

            try:
                self.uplink.check_files()
            except UplinkConfigError as exc:
                found.append(Finding("uplink", str(exc)))
        return found


# ------------------------------------------------------------------------ phase one
_TABLES: Final = {
    "sensor": {"id", "topology", "key"},
    "capture": {"interface", "darknet", "exclude", "snaplen", "buffer_bytes", "extra_bpf",
                "timeout_ms", "reopen_min_s", "reopen_max_s"},
    "spool": {"path", "max_bytes", "state"},
    "limits": {"max_sources", "max_destinations"},
    "time": {"wait_for_sync_s", "close_grace_s", "step_threshold_s"},
    "responder": {"enabled", "rate_per_s", "burst"},
    "test": {"bucket_seconds", "clock_offset_file"},
    "uplink": None,  # validated by sensor.edges.uplink_config
}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class _Reader:
    """Typed access to one table, recording findings instead of raising."""

    def __init__(self, name: str, table: Mapping[str, Any], findings: list[Finding],
                 base: Path | None) -> None:
        self.name = name
        self.t = table
        self.findings = findings
        self.base = base

    def bad(self, key: str, reason: str) -> None:
        self.findings.append(Finding(f"{self.name}.{key}", reason))

    def get(self, key: str, typ: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.t:
            return default
        v = self.t[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
            names = " or ".join(t.__name__ for t in types)
            self.bad(key, f"expected {names}, got {type(v).__name__} ({v!r})")
            return default
        return v

    def number(self, key: str, default: float, *, minimum: float = 0.0,
               strict: bool = False, integer: bool = False, maximum: float | None = None) -> Any:
        v = self.get(key, int if integer else (int, float), default)
        lo, hi = _num(minimum), _num(maximum) if maximum is not None else ""
        if isinstance(v, float) and not math.isfinite(v):
            span = (f"greater than {lo}" if strict else f"at least {lo}") + (
                f" and at most {hi}" if hi else "")
            self.bad(key, f"{v} is not a finite number: write a number {span} "
                     "(docs/deployment.md lists each field's range)")
            return default
        if strict and not v > minimum:
            self.bad(key, f"{v} must be greater than {lo}")
            return default
        if not strict and v < minimum:
            self.bad(key, f"{v} must not be below {lo}"
                     + (" (a negative limit makes no sense)" if minimum == 0 else ""))
            return default
        if maximum is not None and v > maximum:
            self.bad(key, f"{v} must not exceed {hi}")
            return default
        return int(v) if integer else float(v)

    def path(self, key: str, default: Path | None) -> Path | None:
        v = self.get(key, str, None)
        if v is None:
            return default
        if not v:
            self.bad(key, "empty path")
            return default
        p = Path(v)
        if self.base is not None and not p.is_absolute():
            p = self.base / p
        return p

    def blocks(self, key: str) -> list[tuple[str, IPNetwork]]:
        v = self.get(key, list, [])
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                self.bad(f"{key}[{i}]", f"expected a CIDR string, got {item!r}")
                continue
            try:
                net = ipaddress.ip_network(item.strip(), strict=True)
            except ValueError as exc:
                try:
                    loose = ipaddress.ip_network(item.strip(), strict=False)
                    self.bad(f"{key}[{i}]", f"{item!r} has host bits set; write {loose}")
                except ValueError:
                    self.bad(f"{key}[{i}]", f"{item!r} is not a CIDR block such as "
                             f"198.51.100.0/24 or 2001:db8::/48 ({exc})")
                continue
            out.append((item, net))
        return out


def parse_config(doc: Mapping[str, Any], *, base_dir: Path | None = None,
                 source: str = "config") -> SensorConfig:
    """Validate a parsed TOML document; raises ConfigError listing every finding."""
    findings: list[Finding] = []
    for name in sorted(set(doc) - set(_TABLES)):
        findings.append(Finding(name, f"unknown table or key; known tables: "
                                f"{', '.join(sorted(_TABLES))}"))
    tables: dict[str, Mapping[str, Any]] = {}
    for name, known in _TABLES.items():
        t = doc.get(name, {})
        if not isinstance(t, Mapping):
            findings.append(Finding(name, f"expected a table [{name}], got {type(t).__name__}"))
            t = {}
        if known is not None:
            for key in sorted(set(t) - known):
                findings.append(Finding(f"{name}.{key}", f"unknown field; known fields of "
                                        f"[{name}]: {', '.join(sorted(known))}"))
        tables[name] = t

    r = _Reader("sensor", tables["sensor"], findings, base_dir)
    sensor_id = r.get("id", str, "")
    if not sensor_id:
        r.bad("id", "missing: set the sensor id issued by the central site, e.g. id = \"tyo-01\"")
    else:

        try:
            validate_sensor_id(sensor_id)
        except ValueError as exc:
            r.bad("id", str(exc))
    topology = r.get("topology", str, "routed")
    if topology not in TOPOLOGIES:
        r.bad("topology", f"unknown topology {topology!r}; use one of {', '.join(TOPOLOGIES)}"
              " (see docs/deployment.md)")
        topology = "routed"
    key = r.path("key", None)
    if key is None and "key" not in tables["sensor"]:
        r.bad("key", "missing: the Ed25519 signing key path, e.g. key = "
              "\"/var/lib/teiten/sensor.key\"")

    c = _Reader("capture", tables["capture"], findings, base_dir)
    iface = c.get("interface", str, "eth0")
    if not _IFNAME.match(iface):
        c.bad("interface", f"{iface!r} is not an interface name (`ip link` lists them)")
    darknet = c.blocks("darknet")
    if "darknet" not in tables["capture"]:
        c.bad("darknet", "missing: list the dark blocks, e.g. darknet = [\"198.51.100.0/24\"]")
    elif not darknet and not any(f.field.startswith("capture.darknet") for f in findings):
        c.bad("darknet", "empty: list at least one dark block")
    for i, (a_text, a) in enumerate(darknet):
        for b_text, b in darknet[i + 1:]:
            if a.version == b.version and a.overlaps(b):
                c.bad("darknet", f"blocks {a_text} and {b_text} overlap; list each "
                      "address once (merge them or drop the smaller one)")

    warnings: list[Finding] = []
    for i, (_, net) in enumerate(darknet):
        for p in judge(net):
            if p.severity == "error":
                c.bad(f"darknet[{i}]", f"not a dark block: {p.reason} (docs/deployment.md, "
                      "\"Which blocks are dark\")")
            else:
                warnings.append(Finding(f"capture.darknet[{i}]", p.reason))
    exclude = c.blocks("exclude")
    for ex_text, ex in exclude:
        if darknet and not any(
            ex.version == n.version and ex.subnet_of(n)  # type: ignore[arg-type]
            for _, n in darknet
        ):
            c.bad("exclude", f"{ex_text} is not inside any darknet block; remove it or fix it")
    for i, (_, net) in enumerate(darknet):
        if fully_excluded(net, [ex for _, ex in exclude]):
            c.bad("exclude", f"removes all of darknet[{i}] = {net}: nothing would be captured "
                  "for it; drop the block from darknet, or exclude only the part in use")
    snaplen = c.number("snaplen", 256, minimum=64, integer=True, maximum=262144)
    # libpcap takes the buffer size as a C int: a larger value would crash `teiten run`
    buffer_bytes = c.number("buffer_bytes", 8 << 20, minimum=65536, integer=True,
                            maximum=MAX_BUFFER_BYTES)
    extra = c.get("extra_bpf", str, "")
    timeout_ms = c.number("timeout_ms", 250, minimum=0, strict=True, integer=True,
                          maximum=5000)
    reopen_min = c.number("reopen_min_s", 1.0, minimum=0.01, maximum=3600)
    reopen_max = c.number("reopen_max_s", 30.0, minimum=0.01, maximum=3600)
    if reopen_max < reopen_min:
        c.bad("reopen_max_s", f"{reopen_max:g} is below reopen_min_s = {reopen_min:g}")
    blocks_text = tuple(str(n) for _, n in darknet)
    if extra.strip():

        try:
            check_extra(extra)
        except ValueError as exc:
            c.bad("extra_bpf", str(exc))
    if darknet and not any(f.field.startswith("capture.") for f in findings):

        try:
            darknet_filter(list(blocks_text), [str(n) for _, n in exclude], extra or None)
        except ValueError as exc:
            c.bad("darknet", str(exc))
        else:  # libpcap's verdict, with the snap length the capture will use
            for key, reason in filter_problems(list(blocks_text), [str(n) for _, n in exclude],
                                               extra or None, snaplen=snaplen):
                c.bad(key, reason)

    s = _Reader("spool", tables["spool"], findings, base_dir)
    spool_path = s.path("path", Path("/var/lib/teiten/spool")) or Path("/var/lib/teiten/spool")
    spool_max = s.number("max_bytes", 256 << 20, minimum=4096, integer=True)
    state = s.path("state", None)

    lm = _Reader("limits", tables["limits"], findings, base_dir)
    # Upper bounds: what a central reader accepts (wire.summary), and what fits the
    # board's memory (about 128 MiB an hour at the default 262,144 sources).
    max_sources = lm.number("max_sources", Limits().max_sources, minimum=1,
                            maximum=MAX_SOURCE_ROWS, integer=True)
    max_dests = lm.number("max_destinations", Limits().max_destinations,
                          maximum=MAX_DESTINATION_ROWS, integer=True)

    tm = _Reader("time", tables["time"], findings, base_dir)
    tcfg = TimeConfig(
        wait_for_sync_s=tm.number("wait_for_sync_s", 600.0, maximum=86400),
        close_grace_s=tm.number("close_grace_s", 5.0, maximum=600),
        step_threshold_s=tm.number("step_threshold_s", 2.0, minimum=0.01, maximum=3600),
    )

    if tcfg.close_grace_s * 1000 < 2 * timeout_ms:
        tm.bad("close_grace_s", f"{tcfg.close_grace_s:g} s is shorter than twice "
               f"capture.timeout_ms ({timeout_ms} ms): packets still in the kernel's capture "
               "buffer at the end of an hour would be counted late")

    rp = _Reader("responder", tables["responder"], findings, base_dir)
    enabled = rp.get("enabled", bool, topology == "onlink")
    if enabled and topology != "onlink":
        rp.bad("enabled", f"the ARP/NDP responder answers for the block only in the onlink "
               f"topology; with topology = {topology!r} the board must stay silent: remove it")
    rcfg = ResponderConfig(
        enabled=enabled,
        rate_per_s=rp.number("rate_per_s", 20.0, strict=True, maximum=10000),
        burst=rp.number("burst", 40, minimum=1, integer=True, maximum=100000),
    )

    ts = _Reader("test", tables["test"], findings, base_dir)
    bucket = ts.number("bucket_seconds", HOUR, minimum=1, integer=True)
    if bucket != HOUR and (bucket > HOUR or HOUR % bucket):
        ts.bad("bucket_seconds", f"{bucket} must divide an hour (test-only; production "
               "leaves it out and uses the hour)")
        bucket = HOUR
    test = TestConfig(bucket_seconds=bucket,
                      clock_offset_file=ts.path("clock_offset_file", None))

    uplink_cfg = None
    if "uplink" in doc and isinstance(doc["uplink"], Mapping):

        try:
            uplink_cfg = parse_uplink(
                doc["uplink"], sensor_id=sensor_id or None, spool=spool_path,
                base_dir=base_dir,
            )
        except UplinkConfigError as exc:
            findings.append(Finding("uplink", str(exc).removeprefix("[uplink] ")))

    limits = Limits()
    try:
        limits = Limits(max_sources=max_sources, max_destinations=max_dests)
    except ValueError as exc:
        findings.append(Finding("limits", str(exc)))

    if findings:
        raise ConfigError(findings, source)
    assert key is not None
    return SensorConfig(
        sensor_id=sensor_id,
        topology=topology,
        key=key,
        capture=CaptureConfig(
            interface=iface, darknet=blocks_text, exclude=tuple(str(n) for _, n in exclude),
            snaplen=snaplen, buffer_bytes=buffer_bytes, extra_bpf=extra,
            timeout_ms=timeout_ms, reopen_min_s=reopen_min, reopen_max_s=reopen_max,
        ),
        spool=SpoolConfig(path=spool_path, max_bytes=spool_max, state=state),
        limits=limits,
        time=tcfg,
        responder=rcfg,
        uplink=uplink_cfg,
        test=test,
        warnings=tuple(warnings),
    )


def load_config(path: str | os.PathLike[str] = DEFAULT_PATH) -> SensorConfig:
    """Read and validate a sensor.toml (phase one only); raises ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Finding("file", f"{p}: no such file; copy "
                                   "board/rpi/sensor.toml there and edit it")], str(p)) from None
    except OSError as exc:
        raise ConfigError([Finding("file", f"{p}: cannot read: {exc.strerror}")], str(p)) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Finding("file", f"not valid TOML: {exc}")], str(p)) from None
    cfg = parse_config(doc, base_dir=p.parent, source=str(p))
    return _with_source(cfg, p)


def _with_source(cfg: SensorConfig, p: Path) -> SensorConfig:

    return dataclasses.replace(cfg, source=p)


def check_config(path: str | os.PathLike[str]) -> tuple[SensorConfig | None, list[Finding]]:
    """Both phases without side effects: (config or None, every finding)."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return None, exc.findings
    return cfg, cfg.check_files()
