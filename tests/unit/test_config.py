"""sensor.edges.config: a good config parses; each bad one is refused naming its field."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sensor.edges.config import ConfigError, SensorConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[sensor]
id = "tyo-01"
topology = "routed"
key = "/var/lib/teiten/sensor.key"

[capture]
interface = "eth0"
darknet = ["198.51.100.0/24", "2001:db8:dead::/48"]
exclude = ["198.51.100.0/28"]
snaplen = 256
buffer_bytes = 8388608
extra_bpf = "not udp port 5353"

[spool]
path = "/var/lib/teiten/spool"
max_bytes = 268435456

[limits]
max_sources = 262144

[uplink]
host = "central.example.org"
ca = "/etc/teiten/ca.crt"
cert = "/etc/teiten/sensor.crt"
key = "/etc/teiten/tls.key"
"""


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_config(tomllib.loads(text))


def test_good_config_parses_into_frozen_records() -> None:
    cfg = parse(GOOD)
    assert cfg.sensor_id == "tyo-01" and cfg.topology == "routed"
    assert cfg.capture.darknet == ("198.51.100.0/24", "2001:db8:dead::/48")
    assert cfg.capture.exclude == ("198.51.100.0/28",)
    assert cfg.bucket_seconds == 3600  # production always uses the hour
    assert cfg.uplink is not None and cfg.uplink.sensor_id == "tyo-01"
    assert cfg.uplink.spool == cfg.spool.path
    assert "not ip dst net 198.51.100.0/28" in cfg.bpf()
    assert not cfg.responder.enabled
    with pytest.raises(AttributeError):
        cfg.topology = "onlink"  # type: ignore[misc]


def test_board_example_config_is_valid() -> None:
    cfg = load_config(REPO / "board/rpi/sensor.toml")
    assert cfg.bucket_seconds == 3600


def test_onlink_turns_the_responder_on_by_default() -> None:
    cfg = parse(GOOD.replace('topology = "routed"', 'topology = "onlink"'))
    assert cfg.responder.enabled


def _replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD = [
    ("wrong CIDR", _replace('"198.51.100.0/24", ', '"198.51.100.0/33", '),
     "capture.darknet[0]", "not a CIDR"),
    ("host bits", _replace('"198.51.100.0/24", ', '"198.51.100.7/24", '),
     "capture.darknet[0]", "host bits"),
    ("overlapping blocks",
     _replace('"198.51.100.0/24", ', '"198.51.100.0/24", "198.51.100.128/25", '),
     "capture.darknet", "overlap"),
    ("exclude outside", _replace('exclude = ["198.51.100.0/28"]', 'exclude = ["192.0.2.0/28"]'),
     "capture.exclude", "not inside"),
    ("missing key", _replace('key = "/var/lib/teiten/sensor.key"\n', ""),
     "sensor.key", "missing"),
    ("missing darknet", _replace('darknet = ["198.51.100.0/24", "2001:db8:dead::/48"]\n', ""),
     "capture.darknet", "missing"),
    ("missing id", _replace('id = "tyo-01"\n', ""), "sensor.id", "missing"),
    ("bad id", _replace('id = "tyo-01"', 'id = "Tokyo 01"'), "sensor.id", ""),
    ("unknown field", _replace("snaplen = 256", "snaplen = 256\nsnaplenght = 96"),
     "capture.snaplenght", "unknown field"),
    ("unknown table", GOOD + "\n[captrue]\ninterface = 'eth1'\n", "captrue", "unknown"),
    ("negative limit", _replace("max_sources = 262144", "max_sources = -5"),
     "limits.max_sources", "below"),
    ("too many sources", _replace("max_sources = 262144", "max_sources = 4294967296"),
     "limits.max_sources", "exceed"),
    ("negative spool", _replace("max_bytes = 268435456", "max_bytes = -1"),
     "spool.max_bytes", "below"),
    ("negative buffer", _replace("buffer_bytes = 8388608", "buffer_bytes = -8"),
     "capture.buffer_bytes", "below"),
    ("unknown topology", _replace('topology = "routed"', 'topology = "bridged"'),
     "sensor.topology", "unknown topology"),
    ("wrong type", _replace("snaplen = 256", 'snaplen = "256"'), "capture.snaplen", "expected"),
    ("bool for int", _replace("snaplen = 256", "snaplen = true"), "capture.snaplen", "expected"),
    ("bad interface", _replace('interface = "eth0"', 'interface = "eth0; rm -rf /"'),
     "capture.interface", "not an interface"),
    ("responder off-topology", GOOD + "\n[responder]\nenabled = true\n",
     "responder.enabled", "onlink"),
    ("bucket not dividing an hour", GOOD + "\n[test]\nbucket_seconds = 7\n",
     "test.bucket_seconds", "divide an hour"),
    ("uplink unknown key", _replace('host = "central.example.org"',
                                    'host = "central.example.org"\nprot = 8883'),
     "uplink", "unknown key"),
    ("uplink missing host", _replace('host = "central.example.org"\n', ""), "uplink", "host"),
]


@pytest.mark.parametrize(("name", "text", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_the_field(name: str, text: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    fields = {f.field: f.reason for f in info.value.findings}
    assert field in fields, f"{name}: findings were {fields}"
    assert words.lower() in fields[field].lower()
    assert field in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    text = _replace('topology = "routed"', 'topology = "ring"').replace(
        "max_sources = 262144", "max_sources = -1")
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert {"sensor.topology", "limits.max_sources"} <= {f.field for f in info.value.findings}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("name", "text", "field", "words"), BAD[:6] + BAD[8:11] + BAD[14:15],
                         ids=[b[0] for b in BAD[:6] + BAD[8:11] + BAD[14:15]])
def test_config_check_command_rejects(tmp_path: Path, name: str, text: str, field: str,
                                      words: str) -> None:
    p = tmp_path / "sensor.toml"
    p.write_text(text)
    r = _cli("config", "check", str(p), "--no-files")
    assert r.returncode == 2, r.stdout + r.stderr
    assert field in r.stderr and words.lower() in r.stderr.lower()


def test_config_check_finds_missing_files(tmp_path: Path) -> None:
    p = tmp_path / "sensor.toml"
    p.write_text(GOOD.replace("/var/lib/teiten/sensor.key", str(tmp_path / "nokey")))
    r = _cli("config", "check", str(p), "--json")
    assert r.returncode == 2
    import json

    doc = json.loads(r.stdout)
    assert not doc["ok"]
    assert any(f["field"] == "sensor.key" and "teiten keygen" in f["reason"]
               for f in doc["findings"])
    ok = _cli("config", "check", str(p), "--no-files")
    assert ok.returncode == 0 and "OK" in ok.stdout


def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    p = tmp_path / "sensor.toml"
    p.write_text(_replace('topology = "routed"', 'topology = "bridged"'))
    r = _cli("run", "--config", str(p))
    assert r.returncode == 2 and "sensor.topology" in r.stderr


# ---------------------------------------------------------------- issue 11: what crashed or
# blinded the board passed the check.  Each class is refused, naming the field.

FLOAT_FIELDS = [("capture", "reopen_min_s"), ("capture", "reopen_max_s"),
                ("time", "wait_for_sync_s"), ("time", "close_grace_s"),
                ("time", "step_threshold_s"), ("responder", "rate_per_s")]


def parse_with(**tables: dict[str, object]) -> SensorConfig:
    doc = tomllib.loads(GOOD)
    for name, fields in tables.items():
        doc.setdefault(name, {}).update(fields)
    return parse_config(doc)


def refused(**tables: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_with(**tables)
    return {f.field: f.reason for f in info.value.findings}


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("table", "key"), FLOAT_FIELDS, ids=[k for _, k in FLOAT_FIELDS])
def test_non_finite_numbers_are_refused(table: str, key: str, value: str) -> None:
    found = refused(**{table: {key: float(value)}})
    assert "not a finite number" in found[f"{table}.{key}"]
    assert "at most" in found[f"{table}.{key}"]  # says what to write instead


def test_nan_and_inf_parse_from_toml_and_are_refused() -> None:
    text = GOOD + "\n[time]\nclose_grace_s = nan\nstep_threshold_s = inf\n"
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert {"time.close_grace_s", "time.step_threshold_s"} <= {
        f.field for f in info.value.findings}


@pytest.mark.parametrize(("table", "key"), FLOAT_FIELDS, ids=[k for _, k in FLOAT_FIELDS])
def test_huge_finite_numbers_are_refused(table: str, key: str) -> None:
    assert "must not exceed" in refused(**{table: {key: 1e308}})[f"{table}.{key}"]


def test_a_buffer_libpcap_cannot_take_is_refused() -> None:
    assert "must not exceed" in refused(capture={"buffer_bytes": 1 << 33})[
        "capture.buffer_bytes"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e308, -1e308,
                                   0.0, 1e-300, 0.01, 600.0, 3600.0, 86400.0])
@pytest.mark.parametrize(("table", "key"), FLOAT_FIELDS, ids=[k for _, k in FLOAT_FIELDS])
def test_every_value_the_check_accepts_starts_the_daemon(table: str, key: str,
                                                         value: float) -> None:
    """Today's main accepted close_grace_s = nan (ValueError when the daemon started) and
    step_threshold_s = inf (OverflowError): accepted now means it starts and ticks."""
    from sensor.edges.daemon import Daemon
    from tests.fakes import ManualClock

    fields: dict[str, object] = {key: value}
    if key == "reopen_min_s":
        fields["reopen_max_s"] = 3600.0
    try:
        cfg = parse_with(**{table: fields})
    except ConfigError as exc:
        assert any(f.field.startswith(f"{table}.") for f in exc.findings)
        return
    d = Daemon(cfg, clock=ManualClock(1_800_000_000_000_000), compiled=False)
    d.steps.check()
    d.close_due()


DARKNET_REFUSED = [
    ("everything v4", "0.0.0.0/0", "all of the IPv4 address space"),
    ("everything v6", "::/0", "all of the IPv6 address space"),
    ("upper half", "128.0.0.0/1", "1/2 of the IPv4"),
    ("lower half", "0.0.0.0/1", "1/2 of the IPv4"),
    ("v6 half", "8000::/1", "1/2 of the IPv6"),
    ("an eighth", "32.0.0.0/3", "at most a /8"),
    ("v6 global unicast", "2000::/3", "at most a /12"),
    ("loopback", "127.0.0.0/8", "loopback"),
    ("v6 loopback", "::1/128", "loopback"),
    ("multicast", "224.0.0.0/4", "multicast"),
    ("a multicast block", "239.1.0.0/16", "multicast"),
    ("v6 multicast", "ff02::/16", "multicast"),
    ("link-local", "169.254.0.0/16", "link-local"),
    ("v6 link-local", "fe80::/64", "link-local"),
    ("limited broadcast", "255.255.255.255/32", "limited broadcast"),
    ("this network", "0.0.0.0/8", "this network"),
    ("reserved", "240.0.0.0/4", "reserved"),
    ("ipv4-mapped", "::ffff:198.51.100.0/120", "write the IPv4 block 198.51.100.0/24"),
    ("6to4", "2002:c633:6400::/40", "6to4"),
    ("v6 reserved space", "4000::/16", "global unicast space 2000::/3"),
    ("contains protocol assignments", "192.0.0.0/16", "contains 192.0.0.0/24"),
]


@pytest.mark.parametrize(("name", "block", "words"), DARKNET_REFUSED,
                         ids=[d[0] for d in DARKNET_REFUSED])
def test_a_darknet_that_is_not_a_dark_block_is_refused(name: str, block: str,
                                                       words: str) -> None:
    found = refused(capture={"darknet": [block], "exclude": []})
    assert "not a dark block" in found["capture.darknet[0]"], found
    assert words in found["capture.darknet[0]"], found
    assert "Which blocks are dark" in found["capture.darknet[0]"]


def test_the_failing_block_is_named_by_its_index() -> None:
    found = refused(capture={"darknet": ["198.51.100.0/24", "127.0.0.0/8"], "exclude": []})
    assert "capture.darknet[1]" in found and "capture.darknet[0]" not in found


@pytest.mark.parametrize("exclude", [["198.51.100.0/24"],
                                     ["198.51.100.0/25", "198.51.100.128/25"],
                                     ["198.51.100.0/24", "198.51.100.0/28"]])
def test_an_exclude_that_removes_a_whole_block_is_refused(exclude: list[str]) -> None:
    found = refused(capture={"exclude": exclude})
    assert "removes all of darknet[0] = 198.51.100.0/24" in found["capture.exclude"]


@pytest.mark.parametrize("block", ["10.20.0.0/16", "192.168.50.0/24", "172.16.0.0/12",
                                   "100.64.0.0/16", "fd00:1234::/48"])
def test_a_private_darknet_passes_with_a_warning(block: str) -> None:
    cfg = parse_with(capture={"darknet": [block], "exclude": []})
    assert [w.field for w in cfg.warnings] == ["capture.darknet[0]"]
    assert "lab" in cfg.warnings[0].reason


@pytest.mark.parametrize("block", ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                   "2001:db8::/32", "2001:db8:dead::/48", "3fff::/20",
                                   "44.0.0.0/8", "2400::/12"])
def test_documentation_and_real_blocks_pass_silently(block: str) -> None:
    cfg = parse_with(capture={"darknet": [block], "exclude": []})
    assert cfg.warnings == ()


EXTRA_REFUSED = [
    ("does not compile", "tcp and", "does not compile"),
    ("unknown port name", "port no-such-service", "does not compile"),
    ("escapes its parentheses", "1=1) or (1=1", "closes a parenthesis it did not open"),
    ("opens a parenthesis", "(tcp", "open"),
    ("shifts the offsets", "(vlan or 1=1)", "shifted offsets"),
    ("matches nothing", "ip and ip6", "matches no packet at all"),
    ("hides a block", "ip6", "hides every packet to darknet block 198.51.100.0/24"),
    ("control character", "tcp\x00 or 1=1", "control character"),
]


@pytest.mark.parametrize(("name", "extra", "words"), EXTRA_REFUSED,
                         ids=[e[0] for e in EXTRA_REFUSED])
def test_an_extra_bpf_libpcap_refuses_or_that_widens_is_refused(name: str, extra: str,
                                                                words: str) -> None:
    found = refused(capture={"extra_bpf": extra})
    assert words in found["capture.extra_bpf"], found


def test_the_example_extra_bpf_still_passes() -> None:
    cfg = parse(GOOD)
    assert cfg.capture.extra_bpf == "not udp port 5353" and cfg.warnings == ()


def _doc_examples() -> list[str]:
    text = (REPO / "docs/deployment.md").read_text()
    blocks = text.split("```toml\n")[1:]
    assert blocks, "docs/deployment.md has no ```toml examples"
    return [b.split("```", 1)[0] for b in blocks]


@pytest.mark.parametrize("example", _doc_examples())
def test_documented_examples_pass(example: str) -> None:
    doc = tomllib.loads(GOOD)
    for name, fields in tomllib.loads(example).items():
        doc[name] = {**doc.get(name, {}), **fields}
    cfg = parse_config(doc)
    assert cfg.warnings == () or "lab" in example


CLI_REFUSED = [
    ("nan", "[time]\nclose_grace_s = nan\n", "time.close_grace_s", "finite"),
    ("inf", "[time]\nstep_threshold_s = inf\n", "time.step_threshold_s", "finite"),
    ("everything", 'darknet = ["0.0.0.0/0"]', "capture.darknet[0]", "at most a /8"),
    ("v6 everything", 'darknet = ["::/0"]', "capture.darknet[0]", "at most a /12"),
    ("loopback", 'darknet = ["127.0.0.0/8"]', "capture.darknet[0]", "loopback"),
    ("mapped", 'darknet = ["::ffff:198.51.100.0/120"]', "capture.darknet[0]",
     "write the IPv4 block"),
    ("whole exclude", 'darknet = ["198.51.100.0/28"]', "capture.exclude", "removes all"),
    ("escape", 'extra_bpf = "1=1) or (1=1"', "capture.extra_bpf", "balance"),
    ("no compile", 'extra_bpf = "tcp and"', "capture.extra_bpf", "does not compile"),
]


@pytest.mark.parametrize(("name", "change", "field", "words"), CLI_REFUSED,
                         ids=[c[0] for c in CLI_REFUSED])
def test_config_check_refuses_what_would_crash_or_blind(tmp_path: Path, name: str, change: str,
                                                        field: str, words: str) -> None:
    if change.startswith("["):
        text = GOOD + "\n" + change
    elif change.startswith("darknet"):
        text = _replace('darknet = ["198.51.100.0/24", "2001:db8:dead::/48"]', change)
    else:
        text = _replace('extra_bpf = "not udp port 5353"', change)
    p = tmp_path / "sensor.toml"
    p.write_text(text)
    r = _cli("config", "check", str(p), "--no-files")
    assert r.returncode == 2, r.stdout + r.stderr
    assert field in r.stderr and words in r.stderr, r.stderr


def test_config_check_warns_about_a_private_darknet_and_passes(tmp_path: Path) -> None:
    import json

    p = tmp_path / "sensor.toml"
    p.write_text(_replace('darknet = ["198.51.100.0/24", "2001:db8:dead::/48"]',
                          'darknet = ["10.77.0.0/16", "2001:db8:dead::/48"]')
                 .replace('exclude = ["198.51.100.0/28"]', "exclude = []"))
    r = _cli("config", "check", str(p), "--no-files")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    assert "warning: capture.darknet[0]" in r.stderr and "RFC 1918" in r.stderr
    doc = json.loads(_cli("config", "check", str(p), "--no-files", "--json").stdout)
    assert doc["ok"] and [w["field"] for w in doc["warnings"]] == ["capture.darknet[0]"]


def test_firewall_refuses_a_config_that_is_not_dark(tmp_path: Path) -> None:
    """With 0.0.0.0/0 today's `teiten firewall` wrote a ruleset dropping all IPv4 output."""
    p = tmp_path / "sensor.toml"
    p.write_text(_replace('darknet = ["198.51.100.0/24", "2001:db8:dead::/48"]',
                          'darknet = ["0.0.0.0/0"]').replace('exclude = ["198.51.100.0/28"]',
                                                            "exclude = []"))
    r = _cli("firewall", "--config", str(p))
    assert r.returncode == 2 and "capture.darknet[0]" in r.stderr
    assert "daddr" not in r.stdout
