"""`teiten central receive | ca init | ca crl | issue | revoke | broker-config | db`: run
the site (receiver, certificate authority, broker configuration, database overview).

Every command that prints data takes `--json`.  Handlers import what they drive inside
the function, for start-up time: `teiten central db` should not load the CA's or the
receiver's stacks.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    r = sub.add_parser("receive", help="receive summaries from the broker into the database")
    r.add_argument("--config", required=True, help="central.toml with a [receiver] table")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(handler=_receive)

    ca = sub.add_parser("ca", help="the central certificate authority")
    casub = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    init = casub.add_parser("init", help="create CA, broker and receiver certificates")
    init.add_argument("--dir", default="central-ca", help="folder for keys and certificates")
    init.add_argument(
        "--host",
        action="append",
        help="broker name or address for the server certificate (repeat; default "
        "localhost and 127.0.0.1)",
    )
    init.add_argument("--json", action="store_true")
    init.set_defaults(handler=_ca_init)
    crl = casub.add_parser(
        "crl", help="re-sign the CRL with a fresh next_update (cron, well within --days)"
    )
    crl.add_argument("--dir", default="central-ca", help="the CA folder")
    crl.add_argument("--days", type=int, default=30, help="next_update this far ahead")
    crl.add_argument("--json", action="store_true")
    crl.set_defaults(handler=_ca_crl)
    ec_ = casub.add_parser("enrol-client", help="the enrolment service's certificate "
                           "(CN central-enrol) and the broker's certificate chain")
    ec_.add_argument("--dir", default="central-ca", help="the CA folder")
    ec_.set_defaults(handler=_ca_enrol_client)

    rv = sub.add_parser(
        "revoke", help="revoke every certificate issued to a sensor and re-issue the CRL"
    )
    rv.add_argument("sensor_id")
    rv.add_argument("--dir", default="central-ca", help="the CA folder")
    rv.add_argument(
        "--reason",
        default="unspecified",
        choices=[
            "unspecified",
            "key-compromise",
            "affiliation-changed",
            "superseded",
            "cessation-of-operation",
        ],
    )
    rv.add_argument(
        "--cert",
        action="append",
        default=[],
        help="also revoke this certificate file (one signed before the CA kept a record)",
    )
    rv.add_argument("--acl", help="the broker's acl file (from broker-config): rewrite it")
    rv.add_argument("--config", help="central.toml: also set revoked = true in its sensors.toml")
    rv.add_argument("--days", type=int, default=30, help="the CRL's next_update this far ahead")
    rv.add_argument("--json", action="store_true")
    rv.set_defaults(handler=_revoke)

    iss = sub.add_parser("issue", help="sign a sensor's certificate request (from `teiten csr`)")
    iss.add_argument("sensor_id")
    iss.add_argument("--csr", required=True, help="the request file from the board")
    iss.add_argument("--dir", default="central-ca", help="the CA folder")
    iss.add_argument("--out", help="certificate file (default SENSOR_ID.crt)")
    iss.add_argument("--days", type=int, default=825)
    iss.set_defaults(handler=_issue)

    bc = sub.add_parser("broker-config", help="write mosquitto.conf and acl for the broker")
    bc.add_argument("--ca-dir", default="central-ca")
    bc.add_argument("--out", required=True, help="folder for mosquitto.conf and acl")
    bc.add_argument("--data-dir", default="/var/lib/mosquitto")
    bc.add_argument("--tls-port", type=int, default=8883)
    bc.add_argument("--ws-port", type=int, default=443)
    bc.add_argument("--enrol-port", type=int, default=8884,
                    help="the enrolment listener (docs/enrolment.md); 0: none")
    bc.set_defaults(handler=_broker_config)

    en = sub.add_parser("enroll", help="a one-time enrolment token for a sensor "
                        "(docs/enrolment.md)")
    en.add_argument("sensor_id")
    en.add_argument("--config", required=True, help="central.toml with [receiver] and "
                    "[enrolment]")
    en.add_argument("--expires", help="token lifetime, e.g. 7d or 12h (default [enrolment] "
                    "token_expires, 7d)")
    en.add_argument("--replace", action="store_true", help="the sensor id is enrolled: this "
                    "token enrols its replacement board (the old board's certificates are "
                    "revoked when the new one enrols)")
    en.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    en.add_argument("--json", action="store_true")
    en.set_defaults(handler=_enroll)
    ed = sub.add_parser("enrold", help="run the enrolment and renewal service")
    ed.add_argument("--config", required=True)
    ed.add_argument("-v", "--verbose", action="store_true")
    ed.set_defaults(handler=_enrold)

    db = sub.add_parser("db", help="print what the central database holds")
    src = db.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="central.toml (uses its database)")
    src.add_argument("--db", help="the SQLite file")
    db.add_argument("--json", action="store_true")
    db.set_defaults(handler=_db)


def _err(msg: object) -> int:
    print(f"teiten central: {msg}", file=sys.stderr)
    return 2


def _ca_errors(handler: Callable[[argparse.Namespace], int]
               ) -> Callable[[argparse.Namespace], int]:
    """A CA command: the CA's refusal (central.ca.CAError) is its error message, exit 2."""
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from central.ca import CAError  # here, not at the top: start-up time (see above)

        try:
            return handler(args)
        except CAError as exc:
            return _err(exc)

    return run


def _log_to_stderr(verbose: bool) -> None:
    """The long-running commands' (receive, enrold) log lines, INFO with -v."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def _run_until_signalled(run: Callable[[threading.Event], None], close: Callable[[], None]
                         ) -> int:
    """`run(stop)` until SIGTERM or SIGINT sets `stop`, then `close()`, even if it raised."""
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        run(stop)
    finally:
        close()
    return 0


def _receive(args: argparse.Namespace) -> int:
    from central.config import CentralConfigError, load_central
    from central.receiver import open_receiver
    from central.store import StoreError
    from wire.keys import KeyringError

    _log_to_stderr(args.verbose)
    try:
        cfg = load_central(args.config)
        receiver, store = open_receiver(cfg)
    except (CentralConfigError, StoreError, KeyringError, FileNotFoundError) as exc:
        return _err(exc)
    return _run_until_signalled(receiver.run, store.close)


@_ca_errors
def _ca_init(args: argparse.Namespace) -> int:
    from central.ca import init_ca

    f = init_ca(args.dir, hosts=args.host)
    out = {
        "ca_certificate": str(f.ca_crt),
        "ca_key": str(f.ca_key),
        "server_certificate": str(f.server_crt),
        "server_key": str(f.server_key),
        "receiver_certificate": str(f.receiver_crt),
        "receiver_key": str(f.receiver_key),
        "crl": str(f.crl),
        "issued_record": str(f.issued),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:22} {v}")
        print(f"keep {f.ca_key} offline when you can; copy {f.ca_crt} to every board")
    return 0


@_ca_errors
def _ca_crl(args: argparse.Namespace) -> int:
    from central.ca import refresh_crl

    info = refresh_crl(args.dir, days=args.days)
    out = {
        "crl": str(info.path),
        "crl_number": info.number,
        "revoked_certificates": info.revoked,
        "next_update": info.next_update.isoformat(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"wrote {info.path} (CRL {info.number}, {info.revoked} revoked, next update "
            f"{info.next_update:%Y-%m-%d %H:%M} UTC); restart the broker: "
            "`systemctl restart mosquitto`"
        )
    return 0


@_ca_errors
def _revoke(args: argparse.Namespace) -> int:
    from central.ca import mark_revoked_in_keyring, revoke, write_acl
    from central.config import CentralConfigError, acl_text, load_central

    sensors_toml: Path | None = None
    if args.config:
        try:
            sensors_toml = load_central(args.config).sensors
        except (CentralConfigError, FileNotFoundError) as exc:
            return _err(exc)
    try:
        pems = [Path(c).read_bytes() for c in args.cert]
    except OSError as exc:
        return _err(f"cannot read {exc.filename}: {exc.strerror}")
    try:
        r = revoke(args.dir, args.sensor_id, reason=args.reason, certificates=pems, days=args.days)
        if args.acl:
            write_acl(args.dir, Path(args.acl), acl_text())
    except OSError as exc:
        return _err(exc)
    keyring = None
    if sensors_toml is not None:
        try:
            keyring = mark_revoked_in_keyring(sensors_toml, args.sensor_id)
        except OSError as exc:
            return _err(f"revoked, but cannot update {sensors_toml}: {exc}")
    todo = [
        "restart the broker: `systemctl restart mosquitto` (not reload: Mosquitto 2.0.11 "
        "can crash after a SIGHUP with the WebSockets-TLS listener; a restart also ends the "
        "sensor's open connections)"
    ]
    if not args.acl:
        todo.append(
            "deny it in the broker ACL (WebSockets-TLS ignores the CRL in Mosquitto 2.0): "
            f"`teiten central revoke {args.sensor_id} --dir {args.dir} --acl ACL` or re-run "
            "`teiten central broker-config`"
        )
    if keyring is not True:
        where = sensors_toml or "sensors.toml"
        todo.append(f"set `revoked = true` under [sensors.{args.sensor_id}] in {where}")
    out = {
        "sensor_id": r.sensor_id,
        "revoked_serials": r.revoked,
        "already_revoked_serials": r.already,
        "crl": str(r.crl.path),
        "crl_number": r.crl.number,
        "crl_next_update": r.crl.next_update.isoformat(),
        "acl": args.acl,
        "sensors_toml_updated": str(sensors_toml) if keyring else None,
        "next_steps": todo,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"revoked {len(r.revoked)} certificate(s) of {r.sensor_id}: {', '.join(r.revoked)}")
    if r.already:
        print(f"already revoked: {', '.join(r.already)}")
    print(f"wrote {r.crl.path} (CRL {r.crl.number}, next update {r.crl.next_update:%Y-%m-%d})")
    if args.acl:
        print(f"wrote {args.acl}: {r.sensor_id} may use no topic")
    if keyring:
        print(f"set revoked = true for {r.sensor_id} in {sensors_toml}")
    print("next:")
    for step in todo:
        print(f"  - {step}")
    return 0


@_ca_errors
def _issue(args: argparse.Namespace) -> int:
    from central.ca import issue_sensor

    try:
        csr = Path(args.csr).read_bytes()
    except OSError as exc:
        return _err(f"cannot read {args.csr}: {exc.strerror}")
    pem = issue_sensor(args.dir, args.sensor_id, csr, days=args.days)
    out = Path(args.out or f"{args.sensor_id}.crt")
    out.write_bytes(pem)
    print(f"wrote {out}: copy it to the board as the [uplink] cert")
    return 0


def _broker_config(args: argparse.Namespace) -> int:
    from central.ca import CAError, CAFiles, write_acl
    from central.config import acl_text, render_mosquitto_conf

    files = CAFiles(Path(args.ca_dir).resolve())
    if not files.crl.exists():
        return _err(
            f"no CRL at {files.crl} (the broker will not start without it); "
            f"run `teiten central ca crl --dir {args.ca_dir}` first"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        write_acl(files.dir, out / "acl", acl_text())
    except CAError as exc:
        return _err(exc)
    enrol: dict[str, Any] = {}
    if args.enrol_port:
        from central.ca import ensure_enrol_client, write_server_chain
        from central.config import enrol_acl_text

        ensure_enrol_client(files.dir)
        (out / "enrol.acl").write_text(enrol_acl_text())
        pw = out / "enrol.passwd"
        if not pw.exists():
            pw.write_text("")
        enrol = dict(enrol_port=args.enrol_port, enrol_certfile=write_server_chain(files.dir),
                     password_file=pw.resolve(), enrol_acl_file=(out / "enrol.acl").resolve())
    (out / "mosquitto.conf").write_text(
        render_mosquitto_conf(
            data_dir=Path(args.data_dir),
            acl_file=(out / "acl").resolve(),
            cafile=files.ca_crt,
            certfile=files.server_crt,
            keyfile=files.server_key,
            crlfile=files.crl,
            tls_port=args.tls_port,
            ws_port=args.ws_port,
            **enrol,
        )
    )
    print(f"wrote {out / 'mosquitto.conf'} and {out / 'acl'}")
    if enrol:
        print(f"enrolment listener on {args.enrol_port}: {out / 'enrol.acl'}, "
              f"{out / 'enrol.passwd'} (writable by `teiten central enrold`, readable by "
              "mosquitto); see docs/enrolment.md")
    return 0


def _db(args: argparse.Namespace) -> int:
    from central.config import CentralConfigError, load_central
    from central.store import Store, StoreError

    try:
        path = Path(args.db) if args.db else load_central(args.config).database
        if not path.exists():
            return _err(f"no database at {path}; start `teiten central receive` first")
        with Store(path) as store:
            ov = store.overview()
    except (CentralConfigError, StoreError) as exc:
        return _err(exc)
    if args.json:
        print(json.dumps(ov, indent=2, sort_keys=True))
        return 0
    print_overview(ov)
    return 0


def print_overview(ov: dict[str, Any]) -> None:
    print(f"database   {ov['database']}")
    print(f"summaries  {ov['summaries']}  (duplicates received: {ov['duplicates_received']}; "
          f"not rolled up yet: {ov.get('not_rolled_up', 0)})")
    rej = ov["rejected"]
    print("rejected   " + (", ".join(f"{k}: {v}" for k, v in rej.items()) if rej else "none"))
    print(f"{'sensor':20} {'status':8} {'stored':>6} {'seq first..last':>20} {'health':>6}  gaps")
    for sid, s in ov["sensors"].items():
        rng = f"{s.get('first_sequence', '-')}..{s.get('last_sequence', '-')}"
        gaps = s.get("gaps") or []
        print(
            f"{sid:20} {s.get('status') or '-':8} {s.get('summaries', 0):>6} {rng:>20} "
            f"{s.get('health_messages', 0):>6}  {gaps if gaps else 'none'}"
        )


@_ca_errors
def _ca_enrol_client(args: argparse.Namespace) -> int:
    from central.ca import ca_fingerprint_of, ensure_enrol_client, write_server_chain

    try:
        files = ensure_enrol_client(args.dir)
        chain = write_server_chain(args.dir)
    except OSError as exc:
        return _err(exc)
    print(f"enrolment service: {files.enrol_crt}, {files.enrol_key}; broker chain: {chain}")
    print(f"CA fingerprint (for teiten.toml): {ca_fingerprint_of(args.dir)}")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from central.enrol import (
        EnrolError,
        Enrolment,
        EnrolStore,
        iso,
        load_enrolment,
        sync_password_file,
        toml_snippet,
    )
    from central.fleet import parse_duration

    try:
        cfg = load_enrolment(args.config)
        expires = parse_duration(args.expires) if args.expires else None
        with EnrolStore(cfg.database) as store:
            issued = Enrolment(store, cfg).new_token(args.sensor_id, expires_s=expires,
                                                     replace=args.replace)
            sync_password_file(store, cfg)
        snippet = toml_snippet(issued, cfg)
    except (EnrolError, ValueError, OSError) as exc:
        return _err(exc)
    out = {"sensor_id": issued.sensor_id, "token": issued.token, "token_id": issued.token_id,
           "expires": iso(issued.expires_us), "replace": issued.replace,
           "broker": f"{cfg.public_host}:{cfg.enrol_port}", "teiten_toml": snippet}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    what = "pending, replaces its board" if args.replace else "pending"
    print(f"sensor     {issued.sensor_id} ({what})")
    print(f"token      {issued.token}")
    print(f"expires    {out['expires']}  (works once, for this sensor id only)")
    print(f"broker     {out['broker']} (enrolment listener)")
    print("\nAdd to teiten.toml on the card's TEITEN partition:\n")
    print(snippet)
    if not args.no_qr:
        print(qr_text(snippet))
    return 0


def qr_text(data: str) -> str:
    """The QR code of `data` for a terminal: with the Python package `segno` or the
    `qrencode` program when either is installed (both optional), else a note."""
    try:
        import segno  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        segno = None
    if segno is not None:
        import io

        buf = io.StringIO()
        segno.make(data, error="m").terminal(out=buf, compact=True)
        return buf.getvalue()
    import shutil
    import subprocess

    tool = shutil.which("qrencode")
    if tool is not None:
        r = subprocess.run([tool, "-t", "UTF8", "-m", "2", "-l", "M"], input=data.encode(),
                           capture_output=True, timeout=30, check=False)
        if r.returncode == 0:
            return r.stdout.decode()
    return ("(for a QR code a phone can scan, install `segno` (pip, or Debian's "
            "python3-segno) or Debian's `qrencode`)")


def _enrold(args: argparse.Namespace) -> int:
    from central.enrol import EnrolError, EnrolService, EnrolStore, load_enrolment

    _log_to_stderr(args.verbose)
    try:
        cfg = load_enrolment(args.config)
        for p in (cfg.files.ca_crt, cfg.files.enrol_crt, cfg.files.enrol_key):
            if not p.is_file():
                raise EnrolError(f"{p} missing: run `teiten central ca enrol-client --dir "
                                 f"{cfg.ca_dir}`")
        store = EnrolStore(cfg.database)
    except (EnrolError, ValueError, OSError) as exc:
        return _err(exc)
    return _run_until_signalled(lambda stop: EnrolService(cfg, store).run(stop), store.close)
