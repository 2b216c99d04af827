"""`teiten keygen|pubkey`: the board's signing key, made on the board, never overwritten.

Thin handlers over `sensor.edges.keys` (the private file) and `wire.keys` (the public half
and its fingerprint, read over the phone to central staff).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sensor.cli.common import EXIT_OK, emit_json, fail
from sensor.edges.keys import KeyFileError, generate_key, load_private_key
from wire.ids import validate_sensor_id
from wire.keys import fingerprint, public_key_text


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen", help="make this sensor's Ed25519 signing key (mode 0600, never overwrites)"
    )
    p.add_argument("--key", required=True, type=Path, help="where to write the private key")
    p.add_argument("--sensor-id", help="print the sensors.toml entry for this sensor id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_keygen)

    p = subparsers.add_parser("pubkey", help="print the public key and its fingerprint")
    p.add_argument("--key", required=True, type=Path, help="the private key file")
    p.add_argument("--sensor-id", help="print the sensors.toml entry for this sensor id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_pubkey)


def _key_report(path: Path, sensor_id: str | None, as_json: bool, created: bool) -> int:
    try:
        key = load_private_key(path)
        if sensor_id is not None:
            validate_sensor_id(sensor_id)
    except (KeyFileError, ValueError) as exc:
        return fail(str(exc))
    pub = key.public_key()
    text, fp = public_key_text(pub), fingerprint(pub)
    snippet = None
    if sensor_id is not None:
        snippet = f'[sensors.{sensor_id}]\npublic_key = "{text}"\n'
    if as_json:
        out: dict[str, Any] = {"key": str(path), "public_key": text, "fingerprint": fp}
        if snippet is not None:
            out["sensors_toml"] = snippet
        emit_json(out)
        return EXIT_OK
    if created:
        print(f"wrote {path} (mode 0600)")
    print(f"public key:  {text}")
    print(f"fingerprint: {fp}")
    if snippet is not None:
        print("\nadd this to sensors.toml at the central site:\n")
        print(snippet, end="")
    else:
        print("read the fingerprint to central staff, who check it against sensors.toml")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        if args.sensor_id is not None:
            validate_sensor_id(args.sensor_id)
        generate_key(args.key)
    except (KeyFileError, ValueError) as exc:
        return fail(str(exc))
    return _key_report(args.key, args.sensor_id, args.json, created=True)


def cmd_pubkey(args: argparse.Namespace) -> int:
    return _key_report(args.key, args.sensor_id, args.json, created=False)
