"""`teiten keyring|verify`: central staff check sensors.toml and single envelopes.

Registered by `central.cli` (these are top-level commands: they predate the `central`
group, and field staff hand envelopes to central staff who run them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from central.keyring import load_keyring
from wire import envelope as ev
from wire.keys import KeyringError, fingerprint, public_key_text
from wire.summary import iso_utc

EXIT_OK, EXIT_BAD = 0, 1  # 1: the envelope or keyring checked is bad


def fail(message: str) -> int:
    print(f"teiten: {message}", file=sys.stderr)
    return 2  # the command could not run


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keyring", help="check sensors.toml and list enrolled sensors with fingerprints"
    )
    p.add_argument("--keys", required=True, type=Path, help="sensors.toml (docs/central.md)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_keyring)

    p = subparsers.add_parser("verify", help="verify one envelope file against sensors.toml")
    p.add_argument("file", type=Path, help="envelope file (e.g. from a spool)")
    p.add_argument("--keys", required=True, type=Path, help="sensors.toml (docs/central.md)")
    p.add_argument(
        "--max-summary-bytes",
        type=int,
        default=ev.DEFAULT_MAX_SUMMARY_BYTES,
        help="decompression cap (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_verify)


def cmd_keyring(args: argparse.Namespace) -> int:
    try:
        keyring = load_keyring(args.keys)
    except KeyringError as exc:
        return fail(str(exc))
    rows = []
    for sensor_id in keyring.sensor_ids():
        entry = keyring.get(sensor_id)
        assert entry is not None
        rows.append({"sensor_id": sensor_id, "fingerprint": fingerprint(entry.public_key),
                     "public_key": public_key_text(entry.public_key),
                     "revoked": entry.revoked, "note": entry.note})
    if args.json:
        emit_json({"keys": str(args.keys), "sensors": rows})
        return EXIT_OK
    for r in rows:
        flag = "  REVOKED" if r["revoked"] else ""
        print(f"{r['sensor_id']:<24} {r['fingerprint']}{flag}")
    print(f"{len(rows)} sensors in {args.keys}")
    return EXIT_OK


def _envelope_json(env: ev.Envelope) -> dict[str, Any]:
    return {
        "version": env.version,
        "sensor_id": env.sensor_id,
        "sequence": env.sequence,
        "epoch": env.epoch,
        "counter": env.counter,
        "hour_start": env.hour_start,
        "hour": iso_utc(env.hour_start * 1_000_000),
        "created_us": env.created_us,
        "codec": env.codec,
        "payload_bytes": len(env.payload),
    }


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        keyring = load_keyring(args.keys)
    except KeyringError as exc:
        return fail(str(exc))
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        return fail(f"cannot read {args.file}: {exc.strerror}")
    try:
        verified = ev.verify_envelope(data, keyring, max_summary_bytes=args.max_summary_bytes)
    except ev.EnvelopeError as exc:
        if args.json:
            emit_json({"file": str(args.file), "ok": False, "reason": exc.reason,
                        "detail": str(exc)})
        else:
            print(f"REJECTED {args.file}: {exc.reason}: {exc}")
        return EXIT_BAD
    env, summary = verified.envelope, verified.summary
    if args.json:
        out = _envelope_json(env)
        out.update(
            file=str(args.file),
            ok=True,
            summary_bytes=len(verified.summary_bytes),
            packets=summary.packets,
            sources_distinct=summary.sources_distinct,
            health=dict(summary.health),
        )
        emit_json(out)
    else:
        print(
            f"OK {args.file}: sensor {env.sensor_id}, hour {iso_utc(env.hour_start * 1_000_000)}, "
            f"sequence {env.epoch:08x}:{env.counter}, {len(env.payload)} bytes -> "
            f"{len(verified.summary_bytes)} bytes, {summary.packets} packets from "
            f"{summary.sources_distinct} sources"
        )
    return EXIT_OK
