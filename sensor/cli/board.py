"""Board sub-commands of `teiten` for running the sensor: `run`, `config check`, `doctor`,
`netsetup`.  Registered by `sensor/cli/__init__.py` (plugin `sensor.cli.board`).

Exit codes: 0 fine, 1 a problem was found (or the daemon failed), 2 the config is invalid.
A config's warnings (valid, but worth a look: a private-use darknet) go to stderr and do
not change the exit code.

Each handler imports the edges it drives inside the function, for start-up time: `teiten
config check` runs in every unit's ExecStartPre and must not load libpcap, pyroute2,
cryptography or MQTT, which `run`, `doctor` and `netsetup` need.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from sensor.edges.config import DEFAULT_PATH


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the sensor: capture, hourly summaries, sealing into the spool",
        description="Capture on the configured interface and seal one summary per UTC hour "
        "into the spool.  SIGTERM closes the partial hour first; SIGHUP reloads the config.",
    )
    p.add_argument("--config", default=str(DEFAULT_PATH), help=f"default {DEFAULT_PATH}")
    p.add_argument("--uplink", action="store_true",
                   help="also run the uplink in this process (default: teiten-uplink.service "
                   "runs `teiten uplink` apart)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=cmd_run)

    c = subparsers.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION")
    ck = csub.add_parser("check", help="validate a sensor.toml and name every wrong field")
    ck.add_argument("file", nargs="?", default=str(DEFAULT_PATH), metavar="FILE")
    ck.add_argument("--no-files", action="store_true",
                    help="do not look for the key and TLS files (check on another machine)")
    ck.add_argument("--json", action="store_true")
    ck.set_defaults(handler=cmd_config_check)
    c.set_defaults(handler=lambda a: (c.print_help(), 2)[1])

    d = subparsers.add_parser(
        "doctor", help="check the board's network, files, clock and capture; say what to fix"
    )
    d.add_argument("--config", default=str(DEFAULT_PATH))
    d.add_argument("--no-capture", action="store_true", help="do not try to open a capture")
    d.add_argument("--json", action="store_true")
    d.set_defaults(handler=cmd_doctor)

    f = subparsers.add_parser(
        "firewall",
        help="print (or --out write) the board's nftables ruleset for the configured blocks",
    )
    f.add_argument("--config", default=str(DEFAULT_PATH))
    f.add_argument("--out", help="write the ruleset here (for `nft -f`) instead of printing")
    f.set_defaults(handler=cmd_firewall)

    n = subparsers.add_parser(
        "netsetup",
        help="(root) prepare the capture interface for the topology, then run the doctor",
    )
    n.add_argument("--config", default=str(DEFAULT_PATH))
    n.add_argument("--json", action="store_true")
    n.set_defaults(handler=cmd_netsetup)


def _load(path: str, what: str) -> Any:
    from sensor.edges.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"teiten {what}: {exc}", file=sys.stderr)
        print(f"teiten {what}: fix the fields above; `teiten config check {path}` "
              "checks again", file=sys.stderr)
        return None
    for w in cfg.warnings:
        print(f"teiten {what}: warning: {w}", file=sys.stderr)
    return cfg


def cmd_config_check(args: argparse.Namespace) -> int:
    from sensor.edges.config import ConfigError, load_config

    findings = []
    cfg = None
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        findings = exc.findings
    if cfg is not None and not args.no_files:
        findings = cfg.check_files()
    warnings = list(cfg.warnings) if cfg is not None else []
    if args.json:
        print(json.dumps({
            "file": args.file, "ok": not findings,
            "findings": [{"field": f.field, "reason": f.reason} for f in findings],
            "warnings": [{"field": f.field, "reason": f.reason} for f in warnings],
        }, indent=2))
        return 0 if not findings else 2
    for w in warnings:
        print(f"{args.file}: warning: {w.field}: {w.reason}", file=sys.stderr)
    if findings:
        print(f"{args.file}: {len(findings)} problem(s)", file=sys.stderr)
        for f in findings:
            print(f"  {f.field}: {f.reason}", file=sys.stderr)
    else:
        assert cfg is not None
        print(f"{args.file}: OK (sensor {cfg.sensor_id}, {cfg.topology}, "
              f"{cfg.capture.interface}, {', '.join(cfg.capture.darknet)})")
    return 0 if not findings else 2


def cmd_doctor(args: argparse.Namespace) -> int:
    from sensor.edges.doctor import Check, as_json, diagnose, render

    cfg = _load(args.config, "doctor")
    if cfg is None:
        checks = [Check("config_invalid", "error", f"{args.config} is not valid",
                        f"run `teiten config check {args.config}`")]
    else:
        checks = diagnose(cfg, capture=not args.no_capture)
    if args.json:
        print(json.dumps(as_json(checks), indent=2))
    else:
        head = (f"teiten doctor: sensor {cfg.sensor_id}, topology {cfg.topology}, "
                f"interface {cfg.capture.interface}") if cfg else "teiten doctor"
        print(render(checks, head))
    return 1 if any(c.severity == "error" for c in checks) else 0


def cmd_firewall(args: argparse.Namespace) -> int:
    from sensor.edges.durable import write_durably
    from sensor.edges.firewall import render_ruleset

    cfg = _load(args.config, "firewall")
    if cfg is None:
        return 2
    try:
        text = render_ruleset(cfg.capture.darknet)
    except ValueError as exc:  # config check refuses these first; never write such a ruleset
        print(f"teiten firewall: {exc}; fix [capture] darknet (`teiten config check "
              f"{args.config}`)", file=sys.stderr)
        return 2
    if not args.out:
        sys.stdout.write(text)
        return 0
    try:
        write_durably(args.out, text.encode(), mode=0o644)
    except OSError as exc:
        print(f"teiten firewall: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def cmd_netsetup(args: argparse.Namespace) -> int:
    from sensor.edges.doctor import as_json, check_network, render
    from sensor.edges.netsetup import NetSetupError, setup

    cfg = _load(args.config, "netsetup")
    if cfg is None:
        return 2
    try:
        actions = setup(cfg)
    except NetSetupError as exc:
        print(f"teiten netsetup: {exc}", file=sys.stderr)
        return 1
    # Only the network checks: the unit runs as root without file capabilities, so the
    # key and spool checks (the sensor's own, under its own user) cannot pass here.
    checks = check_network(cfg)
    network_ok = not any(c.severity == "error" for c in checks)
    if args.json:
        print(json.dumps({"actions": [{"what": a.what, "changed": a.changed} for a in actions],
                          **as_json(checks)}, indent=2))
    else:
        for a in actions:
            print(f"  {'set ' if a.changed else 'ok  '}  {a.what}")
        print(render(checks, f"teiten netsetup: {cfg.topology} on {cfg.capture.interface}"))
    return 0 if network_ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here for start-up time: `teiten config check` (every unit's ExecStartPre)
    # must not load libpcap, cryptography and MQTT.
    from sensor import __version__
    from sensor.edges.config import ConfigError
    from sensor.edges.daemon import Background, open_daemon
    from sensor.edges.sealer import SealerSetupError
    from sensor.edges.spool import Spool
    from uplink.mqtt import MqttUplink

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    cfg = _load(args.config, "run")
    if cfg is None:
        return 2
    background: list[tuple[str, Background]] = []
    if args.uplink and cfg.uplink is not None:
        publisher = MqttUplink(cfg.uplink, Spool(cfg.spool.path, cfg.spool.max_bytes, scan=False),
                               software_version=__version__)
        background.append(("uplink", publisher.run))
    try:
        daemon = open_daemon(cfg, background=background)
    except ConfigError as exc:
        print(f"teiten run: {exc}", file=sys.stderr)
        return 2
    except SealerSetupError as exc:
        print(f"teiten run: {exc}", file=sys.stderr)
        return 2
    return daemon.run()
