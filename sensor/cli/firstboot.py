"""`teiten firstboot`: what teiten-firstboot.service runs at every boot (docs/flashing.md).

The decisions and the card and key handling are in `sensor.edges.firstboot`; this module
parses the command line, loads the silent ruleset when no valid config may run, and prints
the result on standard output, as JSON, and on every kernel console (screen and serial).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sensor.edges.firstboot import BoardPaths, CardError, open_card, run_firstboot


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "firstboot",
        help="at boot: check teiten.toml on the card, make keys, write the fingerprint",
        description="Read teiten.toml from the card's FAT partition, keep the last good "
        "config if it is invalid, make the signing and TLS keys if missing, and write "
        "teiten-fingerprint.txt or teiten-error.txt back (docs/flashing.md).",
    )
    p.add_argument("--card", required=True,
                   help="the FAT partition: a directory, or an image/device[@@OFFSET] (mtools)")
    p.add_argument("--etc", default="/etc/teiten", help="config directory (default %(default)s)")
    p.add_argument("--run", default="/run", help="runtime directory (default %(default)s)")
    p.add_argument("--ssh-dir", default="/var/lib/teiten/ssh")
    p.add_argument("--no-chown", action="store_true",
                   help="leave keys owned by the caller (tests, a machine without the users)")
    p.add_argument("--console", action="store_true",
                   help="also print to every kernel console (screen and serial line)")
    p.add_argument("--silent-ruleset",
                   help="nftables file loaded (nft -f) when no valid config runs")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(handler=cmd_firstboot)


def _to_consoles(lines: Sequence[str]) -> None:
    try:
        names = Path("/sys/class/tty/console/active").read_text().split()
    except OSError:
        return
    data = ("\r\n".join(lines) + "\r\n").encode()
    for name in names:
        try:
            fd = os.open(f"/dev/{name}", os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.write(fd, data)
        except OSError:
            pass
        finally:
            os.close(fd)


def cmd_firstboot(args: argparse.Namespace) -> int:
    paths = BoardPaths(etc=Path(args.etc), run=Path(args.run), ssh_dir=Path(args.ssh_dir),
                       chown=not args.no_chown)
    try:
        report = run_firstboot(open_card(args.card), paths)
    except CardError as exc:
        print(f"teiten firstboot: {exc}", file=sys.stderr)
        return 2
    network = report.decision.network
    if not network and args.silent_ruleset:
        subprocess.run(["nft", "-f", args.silent_ruleset], check=False, timeout=60)
    if args.json:
        ident = dataclasses.asdict(report.identity) if report.identity else None
        print(json.dumps({"outcome": report.decision.outcome.value, "network": network,
                          "identity": ident, "messages": list(report.messages)}, indent=2))
    else:
        print("\n".join(report.messages))
    if args.console:
        _to_consoles(report.messages)
    return 0 if network else 1

