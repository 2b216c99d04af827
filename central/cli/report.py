"""`teiten central report | rollup | sensors | regions | import | labels | backup |
retention`.

Registered from `central/cli/__init__.py` (`register(sub)`).  Each command takes the database as
`--db FILE` or `--config central.toml` (its `[receiver] database`); `central.toml` may also
hold `[fleet]` and `[retention]` (central/fleet.py).  Commands that print data take
`--json`.  Exit codes: 0 fine, 1 `sensors` found a silent sensor, 2 an error (the message
says what to do).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from central.fleet import OperationsConfig, OperationsConfigError, parse_duration


def _db_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="central.toml (uses [receiver] database)")
    src.add_argument("--db", help="the SQLite file")


def register(sub: Any) -> None:
    r = sub.add_parser("report", help="write the quarterly observation report")
    _db_args(r)
    r.add_argument("--quarter", required=True, help="e.g. 2025Q1 (UTC calendar quarter)")
    r.add_argument("--out", required=True, help="folder for report.md, report.html, PNGs")
    r.add_argument("--lang", choices=("en", "ja"), default="en")
    r.add_argument("--sensors", help="comma-separated sensor ids (default: all)")
    r.add_argument("--json", action="store_true", help="print the report's numbers as JSON")
    r.set_defaults(handler=_report)

    ru = sub.add_parser("rollup", help="fold newly stored summaries into the aggregates")
    _db_args(ru)
    ru.add_argument("--json", action="store_true")
    ru.set_defaults(handler=_rollup)

    s = sub.add_parser("sensors", help="fleet status: every enrolled sensor, silent ones flagged")
    _db_args(s)
    s.add_argument("--keys", help="sensors.toml (default: [receiver] sensors of --config)")
    s.add_argument("--silent-after", help="flag sensors with no summary for this long "
                   "(e.g. 2h; default [fleet] silent_after, or 2h)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_sensors)

    rg = sub.add_parser("regions", help="RIR delegation data for source regions")
    rgsub = rg.add_subparsers(dest="regions_command", metavar="ACTION", required=True)
    imp = rgsub.add_parser("import", help="import delegated-*-extended-latest / NRO files")
    _db_args(imp)
    imp.add_argument("files", nargs="+", help="delegated statistics files")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(handler=_regions_import)
    lk = rgsub.add_parser("lookup", help="country code and registry of addresses")
    _db_args(lk)
    lk.add_argument("addresses", nargs="+")
    lk.add_argument("--json", action="store_true")
    lk.set_defaults(handler=_regions_lookup)

    b = sub.add_parser("backup", help="online copy of the database (SQLite backup API)")
    _db_args(b)
    b.add_argument("--out", required=True, help="the backup file to write")
    b.add_argument("--force", action="store_true", help="overwrite an existing file")
    b.set_defaults(handler=_backup)

    im = sub.add_parser("import", help="store envelope files or a board's spool directory "
                        "offline, through the receiver's checks")
    im.add_argument("paths", nargs="+", metavar="PATH",
                    help="envelope files, or directories of *.tenv files (a spool)")
    src = im.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="central.toml (its [receiver] database and sensors)")
    src.add_argument("--db", help="the SQLite file (with --keys)")
    im.add_argument("--keys", help="sensors.toml (with --db)")
    im.add_argument("--json", action="store_true")
    im.set_defaults(handler=_import)

    lb = sub.add_parser("labels", help="labelled source populations (addresses an analyst "
                        "identified elsewhere)")
    lbsub = lb.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    li = lbsub.add_parser("import", help="load a CSV of address,label,date identified")
    li.add_argument("file", help="CSV: address or CIDR prefix, label, YYYY-MM-DD or ISO time")
    li.add_argument("--label", required=True, help="the population's name (rows naming "
                    "another label are skipped)")
    _db_args(li)
    li.add_argument("--json", action="store_true")
    li.set_defaults(handler=_labels_import)
    ll = lbsub.add_parser("list", help="the labels, their entries and sightings")
    _db_args(ll)
    ll.add_argument("--json", action="store_true")
    ll.set_defaults(handler=_labels_list)
    lr = lbsub.add_parser("remove", help="remove a label and its sightings")
    lr.add_argument("name")
    _db_args(lr)
    lr.add_argument("--json", action="store_true")
    lr.set_defaults(handler=_labels_remove)

    rt = sub.add_parser("retention", help="forget source addresses older than the limit")
    _db_args(rt)
    rt.add_argument("--days", type=int, help="keep source addresses this many days "
                    "(default [retention] source_days)")
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(handler=_retention)


def _err(msg: object) -> int:
    if isinstance(msg, ModuleNotFoundError):
        msg = f"{msg}: install the central extra (pip install 'teiten[central]')"
    print(f"teiten central: {msg}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace) -> tuple[Path, OperationsConfig, Path | None]:
    """(database, operations settings, sensors.toml) from --db or --config."""
    from central.config import load_central, read_central_toml
    from central.fleet import parse_operations

    if getattr(args, "db", None):
        return Path(args.db), OperationsConfig(), None
    doc = read_central_toml(args.config)
    cfg = load_central(args.config, doc)
    return cfg.database, parse_operations(doc), cfg.sensors


def _open(path: Path) -> Any:
    from central.store import Store

    if not path.exists():
        raise FileNotFoundError(f"no database at {path}; start `teiten central receive` first")
    return Store(path)


def _errors() -> tuple[type[BaseException], ...]:
    from central.config import CentralConfigError
    from central.regions import DelegationFormatError
    from central.rollup import QuarterError
    from central.store import StoreError
    from wire.keys import KeyringError

    return (CentralConfigError, OperationsConfigError, StoreError, QuarterError,
            KeyringError, DelegationFormatError, FileNotFoundError,
            ModuleNotFoundError)


def rollup(store: Any, *, quiet: bool = True) -> int:
    """Roll up pending summaries with the stored regions; returns how many."""
    from central.regions import RegionTable
    from central.rollup_job import roll_up_pending

    pending = store.count_pending_rollup()
    if not pending:
        return 0
    from central.labels import LabelSet

    table = RegionTable.from_rows(store.region_rows())
    entries = store.label_entries()
    labels = LabelSet(entries) if entries else None
    t0 = time.monotonic()

    tty = sys.stderr.isatty()

    def progress(done: int) -> None:
        if not quiet and tty:
            print(f"\rrollup: {done}/{pending} summaries", end="", file=sys.stderr, flush=True)

    n: int = roll_up_pending(store, table, progress=progress, labels=labels)
    if not quiet:
        print(f"\rrollup: {n} summaries in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    if n < pending:
        print(f"rollup: {pending - n} stored summaries do not decode and were skipped (the "
              "log names them); they stay pending: check the database file, or restore it "
              "from a backup", file=sys.stderr)
    return n


def _report(args: argparse.Namespace) -> int:
    from central.report import compute_report, write_report
    from central.rollup import parse_quarter

    try:
        parse_quarter(args.quarter)
        db, _, _ = _settings(args)
        sensors = [s.strip() for s in args.sensors.split(",") if s.strip()] \
            if args.sensors else None
        t0 = time.monotonic()
        with _open(db) as store:
            rollup(store, quiet=args.json)
            data = compute_report(store, args.quarter.upper(), sensors=sensors)
        files = write_report(data, Path(args.out), args.lang)
    except _errors() as exc:
        return _err(exc)
    if args.json:
        print(json.dumps(data.to_json(), indent=1, ensure_ascii=False))
    else:
        for f in files:
            print(f)
        print(f"report for {data.quarter} in {time.monotonic() - t0:.1f} s; "
              f"{len(data.notes)} note(s) on missing data", file=sys.stderr)
    return 0


def _rollup(args: argparse.Namespace) -> int:
    try:
        db, _, _ = _settings(args)
        with _open(db) as store:
            n = rollup(store, quiet=args.json)
    except _errors() as exc:
        return _err(exc)
    if args.json:
        print(json.dumps({"rolled_up": n}))
    else:
        print(f"rolled up {n} summaries")
    return 0


def _sensors(args: argparse.Namespace) -> int:
    from central.fleet import fleet_status
    from central.keyring import load_keyring  # the report does not need it

    try:
        db, ops, keys = _settings(args)
        if args.keys:
            keys = Path(args.keys)
        silent_after = parse_duration(args.silent_after) if args.silent_after \
            else ops.silent_after_s
        enrolled: dict[str, bool] = {}
        if keys is not None:
            kr = load_keyring(keys)
            for sid in kr.sensor_ids():
                k = kr.get(sid)
                enrolled[sid] = bool(k and k.revoked)
        with _open(db) as store:
            facts = store.fleet_facts()
        rows = fleet_status(enrolled, facts, now_us=time.time_ns() // 1000,
                            silent_after_s=silent_after)
    except _errors() as exc:
        return _err(exc)
    silent = [r for r in rows if r.silent]
    from central.clones import alarms_by_sensor, print_alarms
    from central.enrol import pending_enrolments, print_pending

    clones = alarms_by_sensor(db)  # a fresh scan: docs/enrolment.md
    pending = pending_enrolments(db)
    if args.json:
        print(json.dumps({"silent_after_s": silent_after, "sensors": [r.to_json() for r in rows],
                          "silent": [r.sensor for r in silent],
                          "clone_alarms": {s: [a.to_json() for a in al]
                                           for s, al in clones.items()},
                          "pending_enrolments": pending}, indent=2))
    else:
        print_fleet(rows, silent_after)
        print_pending(pending)
        print_alarms(clones)
    return 1 if silent or clones else 0


def _ago(us: int | None) -> str:
    if us is None:
        return "never"
    s = max(0, time.time_ns() // 1000 - us) // 1_000_000
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def print_fleet(rows: list[Any], silent_after: int) -> None:
    from wire.summary import iso_utc

    print(f"{'sensor':20} {'last summary (hour)':21} {'received':>10} {'status':>14} "
          f"{'spool':>12} {'missing':>7}  flag")
    for r in rows:
        hour = iso_utc(r.last_summary_hour * 1_000_000)[:16] if r.last_summary_hour else "-"
        status = f"{r.last_status or '-'} {_ago(r.last_status_us) if r.last_status else ''}"
        spool = "-" if r.spool_entries is None else f"{r.spool_entries} ({r.spool_bytes or 0}B)"
        flag = ("SILENT" if r.silent else "") + (" revoked" if r.revoked else "") + (
            " not-enrolled" if not r.enrolled else "") + (
            " clock-unsynced" if r.clock_synchronized is False else "")
        print(f"{r.sensor:20} {hour:21} {_ago(r.last_summary_received_us):>10} "
              f"{status.strip():>14} {spool:>12} {r.missing_sequences:>7}  {flag.strip()}")
    n = sum(r.silent for r in rows)
    print(f"{n} silent for more than {silent_after // 60} min" if n else "no silent sensors")


def _regions_import(args: argparse.Namespace) -> int:
    from central.regions import ParseStats, RegionTable, parse_delegated

    try:
        db, _, _ = _settings(args)
        stats = ParseStats()
        recs = []
        for f in args.files:
            with open(f, encoding="utf-8", errors="replace") as fh:
                recs += parse_delegated(fh, stats=stats, where=f)
        table = RegionTable.build(recs)
        with _open(db) as store:
            store.save_regions(list(table.rows()), [os.path.abspath(f) for f in args.files],
                               stats.serials)
    except _errors() as exc:
        return _err(exc)
    except OSError as exc:
        return _err(f"cannot read {exc.filename}: {exc.strerror}")
    out = {"files": args.files, "serials": stats.serials, "records": stats.records,
           "counted": stats.counted, "skipped_status": stats.skipped_status,
           "ipv4_ranges": table.stats.ipv4_ranges, "ipv6_ranges": table.stats.ipv6_ranges,
           "duplicates": table.stats.duplicates, "conflicts": table.stats.conflicts}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:15} {v}")
        print("new summaries are attributed with these ranges from the next rollup on")
    return 0


def _regions_lookup(args: argparse.Namespace) -> int:
    import ipaddress

    from central.regions import RegionTable

    try:
        db, _, _ = _settings(args)
        with _open(db) as store:
            table = RegionTable.from_rows(store.region_rows())
        res = {}
        for a in args.addresses:
            try:
                packed = ipaddress.ip_address(a).packed
            except ValueError:
                return _err(f"{a!r} is not an IPv4 or IPv6 address")
            hit = table.lookup(packed)
            res[a] = None if hit is None else {"cc": hit[0], "registry": hit[1]}
    except _errors() as exc:
        return _err(exc)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for a, v in res.items():
            print(f"{a:40} {v['cc'] + ' ' + v['registry'] if v else 'not delegated'}")
    return 0


def _backup(args: argparse.Namespace) -> int:
    from central.backup import backup_database

    try:
        db, _, _ = _settings(args)
        t0 = time.monotonic()

        def progress(done: int, total: int) -> None:
            if sys.stderr.isatty():
                print(f"\rbackup: {done}/{total} pages", end="", file=sys.stderr, flush=True)

        dest = backup_database(db, Path(args.out), force=args.force, progress=progress)
    except _errors() as exc:
        return _err(exc)
    print(f"\nwrote {dest} ({dest.stat().st_size} bytes, checked) in "
          f"{time.monotonic() - t0:.1f} s")
    return 0


def _labels_import(args: argparse.Namespace) -> int:
    from central.labels import LabelFormatError, LabelSet, parse_label_csv
    from central.rollup_job import backfill_labels

    tty = sys.stderr.isatty() and not args.json
    try:
        db, _, _ = _settings(args)
        with open(args.file, encoding="utf-8") as fh:
            entries, other = parse_label_csv(fh, args.label, where=args.file)
        with _open(db) as store:
            total = store.count_summaries()
            store.save_label(args.label, entries, os.path.abspath(args.file))

            def progress(done: int) -> None:
                if tty:
                    print(f"\rlabels: {done}/{total} stored summaries searched", end="",
                          file=sys.stderr, flush=True)

            searched = backfill_labels(store, LabelSet({args.label: entries}),
                                       progress=progress)
            info = next(x for x in store.labels() if x["label"] == args.label)
    except LabelFormatError as exc:
        return _err(exc)
    except _errors() as exc:
        return _err(exc)
    except OSError as exc:
        return _err(f"cannot read {exc.filename}: {exc.strerror}")
    if tty:
        print(file=sys.stderr)
    out = {**info, "other_labels_skipped": other, "summaries_searched": searched}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"label {args.label}: {len(entries)} entries ({other} rows of other labels "
              f"skipped); {info['addresses_seen']} addresses seen on {info['days_seen']} "
              f"days in {searched} stored summaries; later summaries are matched at rollup")
    return 0


def _labels_list(args: argparse.Namespace) -> int:
    try:
        db, _, _ = _settings(args)
        with _open(db) as store:
            rows = store.labels()
    except _errors() as exc:
        return _err(exc)
    if args.json:
        print(json.dumps({"labels": rows}, indent=2))
    else:
        from wire.summary import iso_utc

        print(f"{'label':24} {'entries':>8} {'seen':>8} {'days':>5}  imported")
        for r in rows:
            print(f"{r['label']:24} {r['entries']:>8} {r['addresses_seen']:>8} "
                  f"{r['days_seen']:>5}  {iso_utc(r['imported_us'])[:16]} {r['file']}")
        if not rows:
            print("no labels; add one with `teiten central labels import FILE --label NAME`")
    return 0


def _labels_remove(args: argparse.Namespace) -> int:
    try:
        db, _, _ = _settings(args)
        with _open(db) as store:
            removed = store.remove_label(args.name)
    except _errors() as exc:
        return _err(exc)
    if not removed:
        return _err(f"no label {args.name!r}; `teiten central labels list` shows them")
    if args.json:
        print(json.dumps({"removed": args.name}))
    else:
        print(f"removed label {args.name} and its sightings")
    return 0


def _import(args: argparse.Namespace) -> int:
    from central.config import load_central, read_central_toml
    from central.importer import ImportResult, import_envelopes
    from central.keyring import load_keyring
    from central.receiver import Ingest
    from central.store import Store
    from wire.envelope import DEFAULT_MAX_SUMMARY_BYTES

    tty = sys.stderr.isatty() and not args.json
    t0 = time.monotonic()

    def progress(total: int, res: ImportResult) -> None:
        if tty and (res.files % 50 == 0 or res.files == total):
            print(f"\rimport: {res.files}/{total} files, {res.stored} stored, "
                  f"{res.duplicate} duplicate, {len(res.rejected)} rejected",
                  end="", file=sys.stderr, flush=True)

    try:
        if args.config:
            if args.keys:
                return _err("--keys goes with --db; --config names its own sensors.toml")
            cfg = load_central(args.config, read_central_toml(args.config))
            db, keys, cap = cfg.database, cfg.sensors, cfg.max_summary_bytes
        else:
            if not args.keys:
                return _err("--db needs --keys sensors.toml (the enrolled sensors' keys)")
            db, keys, cap = Path(args.db), Path(args.keys), DEFAULT_MAX_SUMMARY_BYTES
        paths = [Path(p) for p in args.paths]
        for p in paths:
            if not p.exists():
                return _err(f"{p}: no such file or directory")
        keyring = load_keyring(keys)
        with Store(db) as store:
            ingest = Ingest(store, keys, max_summary_bytes=cap, keyring=keyring)
            res = import_envelopes(ingest, paths, progress=progress)
    except _errors() as exc:
        return _err(exc)
    if tty:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(res.to_json(), indent=2))
    else:
        print(f"{res.files} files: {res.stored} stored, {res.duplicate} already stored, "
              f"{len(res.rejected)} rejected, {len(res.unreadable)} unreadable "
              f"({time.monotonic() - t0:.1f} s)")
        for r in res.rejected:
            print(f"  rejected {r['path']}: {r['reason']} ({r['detail']})")
        for u in res.unreadable:
            print(f"  unreadable {u['path']}: {u['error']}")
    return 1 if res.rejected or res.unreadable else 0


def _retention(args: argparse.Namespace) -> int:
    try:
        db, ops, _ = _settings(args)
        days = args.days if args.days is not None else ops.source_retention_days
        if days is None:
            return _err("no retention limit: pass --days N or set [retention] source_days")
        if days < 1:
            return _err("--days must be at least 1")
        now_us = time.time_ns() // 1000
        cutoff = now_us - days * 86_400_000_000
        with _open(db) as store:
            rolled = rollup(store, quiet=True)  # never forget what is not aggregated yet
            res = store.apply_retention(cutoff, lambda: os.urandom(8), run_us=now_us)
    except _errors() as exc:
        return _err(exc)
    res = {"days": days, "cutoff_us": cutoff, "rolled_up_first": rolled, **res}
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:20} {v}")
    return 0
