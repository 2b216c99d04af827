"""Board sub-commands of `teiten` for the uplink: `uplink` (the publisher) and `csr`.

Registered by `sensor/cli/__init__.py` (plugin `sensor.cli.uplink`).  `teiten csr` makes the
board's TLS key (it never leaves the board) and prints a certificate request for
`teiten central issue`; `teiten uplink --config sensor.toml` sends the spool to central.
Handlers import inside the function, for start-up time (`csr` needs no MQTT stack).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sensor import __version__


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "uplink",
        help="send spooled envelopes to the central broker (MQTT 5, mutual TLS)",
        description="Publish the spool oldest first; an envelope leaves the spool only "
        "when the central receiver acknowledged storing it.",
    )
    p.add_argument("--config", required=True, help="sensor.toml with an [uplink] table")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_uplink)

    c = subparsers.add_parser(
        "csr",
        help="make the board's TLS key (if missing) and print a certificate request",
        description="The key stays on the board; send the request to the central site, "
        "which runs `teiten central issue SENSOR_ID --csr FILE`.",
    )
    c.add_argument("--key", required=True, help="TLS key path (created, mode 0600, if missing)")
    c.add_argument("--sensor-id", required=True)
    c.add_argument("--out", help="write the request here instead of standard output")
    c.set_defaults(handler=_csr)


def _csr(args: argparse.Namespace) -> int:
    from sensor.edges.certs import make_csr
    from sensor.edges.keys import KeyFileError

    try:
        pem = make_csr(args.key, args.sensor_id)
    except (ValueError, KeyFileError) as exc:
        print(f"teiten csr: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_bytes(pem)
        print(f"wrote {args.out}; send it to the central site", file=sys.stderr)
    else:
        sys.stdout.write(pem.decode())
    return 0


def _uplink(args: argparse.Namespace) -> int:
    from sensor.edges.spool import Spool, SpoolError
    from sensor.edges.uplink_config import UplinkConfigError, load_uplink
    from uplink.mqtt import MqttUplink

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        cfg = load_uplink(args.config)
        cfg.check_files()
        # The capture daemon owns the spool's scan (it removes temporary files, which
        # would include one it is writing now) and its health file; the uplink only reads
        # entries and removes acknowledged ones.
        spool = Spool(cfg.spool, scan=False)
    except (UplinkConfigError, SpoolError) as exc:
        print(f"teiten uplink: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    MqttUplink(cfg, spool, software_version=__version__).run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m sensor.cli.uplink uplink|csr ...` until `teiten` registers this module."""
    parser = argparse.ArgumentParser(prog="teiten")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc: int = args.handler(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
