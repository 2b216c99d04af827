"""The central site's commands: the `teiten central ...` group, and `teiten keyring|verify`.

Registered by the `teiten` dispatcher (`sensor/cli/__init__.py`) by name, when this
package is installed; the board image ships without it.  One module per topic:
`site` (receiver, CA, broker config, database), `report` (report, rollup, sensors,
regions, backup, retention), `keyring` (sensors.toml and single envelopes).
"""

from __future__ import annotations

from typing import Any

from central.cli import keyring, report, site


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("central", help="central site: receiver, CA, database, report")
    sub = p.add_subparsers(dest="central_command", metavar="SUBCOMMAND", required=True)
    site.register(sub)
    report.register(sub)
    keyring.register(subparsers)
