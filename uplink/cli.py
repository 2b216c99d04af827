"""`teiten keygen|pubkey|verify|spool`: keys, envelope verification and spool inspection.

Strategy: thin handlers over uplink.keys, uplink.envelope and sensor.spool; every command that
prints data takes `--json`, every failure prints what to do next and exits non-zero
(1: the thing checked is bad; 2: the command could not run, e.g. a missing file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sensor.spool import Spool, SpoolError
from sensor.summary import iso_utc
from uplink import envelope as ev
from uplink.keys import (
    KeyFileError,
    Keyring,
    KeyringError,
    fingerprint,
    generate_key,
    load_private_key,
    public_key_text,
    validate_sensor_id,
)

EXIT_OK = 0
EXIT_BAD = 1
EXIT_USAGE = 2


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

    spool = subparsers.add_parser("spool", help="inspect the envelope spool")
    spool_sub = spool.add_subparsers(dest="spool_command", metavar="ACTION")
    spool.set_defaults(handler=lambda args: _usage(spool))

    p = spool_sub.add_parser("list", help="list spooled envelopes, oldest first")
    p.add_argument("--spool", required=True, type=Path, help="spool directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_spool_list)

    p = spool_sub.add_parser(
        "verify", help="check every spooled envelope (structure; signatures with --keys)"
    )
    p.add_argument("--spool", required=True, type=Path, help="spool directory")
    p.add_argument("--keys", type=Path, help="sensors.toml: also verify signatures/summaries")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_spool_verify)

    p = spool_sub.add_parser(
        "requeue",
        help="move quarantined envelopes back into the spool (after central was fixed)",
    )
    p.add_argument("--spool", required=True, type=Path, help="spool directory")
    p.add_argument("names", nargs="*", metavar="NAME", help="quarantined files (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_spool_requeue)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _fail(message: str) -> int:
    print(f"teiten: {message}", file=sys.stderr)
    return EXIT_USAGE


def _emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _key_report(path: Path, sensor_id: str | None, as_json: bool, created: bool) -> int:
    try:
        key = load_private_key(path)
        if sensor_id is not None:
            validate_sensor_id(sensor_id)
    except (KeyFileError, ValueError) as exc:
        return _fail(str(exc))
    pub = key.public_key()
    text, fp = public_key_text(pub), fingerprint(pub)
    snippet = None
    if sensor_id is not None:
        snippet = f'[sensors.{sensor_id}]\npublic_key = "{text}"\n'
    if as_json:
        out: dict[str, Any] = {"key": str(path), "public_key": text, "fingerprint": fp}
        if snippet is not None:
            out["sensors_toml"] = snippet
        _emit_json(out)
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
        return _fail(str(exc))
    return _key_report(args.key, args.sensor_id, args.json, created=True)


def cmd_pubkey(args: argparse.Namespace) -> int:
    return _key_report(args.key, args.sensor_id, args.json, created=False)


def cmd_keyring(args: argparse.Namespace) -> int:
    try:
        keyring = Keyring.from_toml(args.keys)
    except KeyringError as exc:
        return _fail(str(exc))
    rows = []
    for sensor_id in keyring.sensor_ids():
        entry = keyring.get(sensor_id)
        assert entry is not None
        rows.append({"sensor_id": sensor_id, "fingerprint": fingerprint(entry.public_key),
                     "public_key": public_key_text(entry.public_key),
                     "revoked": entry.revoked, "note": entry.note})
    if args.json:
        _emit_json({"keys": str(args.keys), "sensors": rows})
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
        keyring = Keyring.from_toml(args.keys)
    except KeyringError as exc:
        return _fail(str(exc))
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror}")
    try:
        verified = ev.verify_envelope(data, keyring, max_summary_bytes=args.max_summary_bytes)
    except ev.EnvelopeError as exc:
        if args.json:
            _emit_json({"file": str(args.file), "ok": False, "reason": exc.reason,
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
        _emit_json(out)
    else:
        print(
            f"OK {args.file}: sensor {env.sensor_id}, hour {iso_utc(env.hour_start * 1_000_000)}, "
            f"sequence {env.epoch:08x}:{env.counter}, {len(env.payload)} bytes -> "
            f"{len(verified.summary_bytes)} bytes, {summary.packets} packets from "
            f"{summary.sources_distinct} sources"
        )
    return EXIT_OK


def _open_spool(path: Path) -> Spool | int:
    if not path.is_dir():
        return _fail(f"no spool directory at {path}; check --spool (the sensor config names it)")
    try:
        return Spool(path, scan=False)  # read-only: inspecting must not move files
    except SpoolError as exc:
        return _fail(str(exc))


def cmd_spool_requeue(args: argparse.Namespace) -> int:
    spool = _open_spool(args.spool)
    if isinstance(spool, int):
        return spool
    moved = spool.requeue(args.names or None)
    left = [p.name for p in spool.quarantined()]
    if args.json:
        _emit_json({"requeued": [e.name for e in moved], "still_quarantined": left})
        return EXIT_OK
    for e in moved:
        print(f"requeued {e.name}")
    print(f"{len(moved)} requeued; {len(left)} still in {spool.quarantine_path}"
          + (" (not whole envelopes, or a name already in the spool)" if left else ""))
    return EXIT_OK


def cmd_spool_list(args: argparse.Namespace) -> int:
    spool = _open_spool(args.spool)
    if isinstance(spool, int):
        return spool
    entries = spool.entries()
    if args.json:
        _emit_json(
            {
                "spool": str(args.spool),
                "entries": [
                    {
                        "name": e.name,
                        "hour_start": e.hour_start,
                        "hour": iso_utc(e.hour_start * 1_000_000),
                        "sequence": e.sequence,
                        "size": e.size,
                    }
                    for e in entries
                ],
                "total_bytes": sum(e.size for e in entries),
                "pending_health": spool.pending_health(),
            }
        )
        return EXIT_OK
    for e in entries:
        print(
            f"{e.name}  {iso_utc(e.hour_start * 1_000_000)}  "
            f"seq {e.sequence >> 32:08x}:{e.sequence & 0xFFFFFFFF}  {e.size} bytes"
        )
    print(f"{len(entries)} envelopes, {sum(e.size for e in entries)} bytes")
    pending = {k: v for k, v in spool.pending_health().items() if v}
    if pending:
        print(f"not yet reported: {pending}")
    return EXIT_OK


def cmd_spool_verify(args: argparse.Namespace) -> int:
    spool = _open_spool(args.spool)
    if isinstance(spool, int):
        return spool
    keyring = None
    if args.keys is not None:
        try:
            keyring = Keyring.from_toml(args.keys)
        except KeyringError as exc:
            return _fail(str(exc))
    results: list[dict[str, Any]] = []
    for entry in spool.entries():
        result: dict[str, Any] = {"name": entry.name, "ok": True}
        try:
            data = spool.read(entry)
            if keyring is None:
                env = ev.parse_envelope(data)
            else:
                env = ev.verify_envelope(data, keyring).envelope
            if (env.hour_start, env.sequence) != (entry.hour_start, entry.sequence):
                result.update(ok=False, reason="name_mismatch",
                              detail="file name does not match the envelope's hour/sequence")
        except ev.EnvelopeError as exc:
            result.update(ok=False, reason=exc.reason, detail=str(exc))
        except SpoolError as exc:
            result.update(ok=False, reason="unreadable", detail=str(exc))
        results.append(result)
    bad = [r for r in results if not r["ok"]]
    if args.json:
        _emit_json({"spool": str(args.spool), "checked": len(results), "bad": len(bad),
                    "signatures_checked": keyring is not None, "results": results})
    else:
        for r in bad:
            print(f"BAD {r['name']}: {r['reason']}: {r['detail']}")
        what = "verified" if keyring is not None else "parsed (no --keys: signatures unchecked)"
        print(f"{len(results) - len(bad)} of {len(results)} envelopes {what}")
        if bad:
            print("the sensor quarantines corrupt files when it starts; "
                  "a bad signature means the wrong key or sensors.toml entry")
    return EXIT_BAD if bad else EXIT_OK
