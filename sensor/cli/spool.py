"""`teiten spool list|verify|requeue`: inspect the board's envelope spool.

Read-only unless `requeue` is asked for; `verify --keys sensors.toml` also checks the
signatures, with the keyring parsed by `wire.keys`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sensor.cli.common import EXIT_BAD, EXIT_OK, EXIT_USAGE, emit_json, fail
from sensor.edges.spool import Spool, SpoolError
from wire import envelope as ev
from wire.keys import KeyringError, parse_keyring_toml
from wire.summary import iso_utc


def register(subparsers: Any) -> None:
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


def _open_spool(path: Path) -> Spool | int:
    if not path.is_dir():
        return fail(f"no spool directory at {path}; check --spool (the sensor config names it)")
    try:
        return Spool(path, scan=False)  # read-only: inspecting must not move files
    except SpoolError as exc:
        return fail(str(exc))


def cmd_spool_requeue(args: argparse.Namespace) -> int:
    spool = _open_spool(args.spool)
    if isinstance(spool, int):
        return spool
    moved = spool.requeue(args.names or None)
    left = [p.name for p in spool.quarantined()]
    if args.json:
        emit_json({"requeued": [e.name for e in moved], "still_quarantined": left})
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
        emit_json(
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
            keyring = parse_keyring_toml(args.keys.read_bytes(), source=str(args.keys))
        except OSError as exc:
            return fail(f"cannot read {args.keys}: {exc.strerror}")
        except KeyringError as exc:
            return fail(str(exc))
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
        emit_json({"spool": str(args.spool), "checked": len(results), "bad": len(bad),
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
