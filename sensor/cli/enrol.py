"""`teiten enrol`: zero-touch enrolment with the one-time token on the card.

Run at boot after `teiten firstboot` and once the management network is up, before the
uplink (docs/enrolment.md).  When teiten.toml has an `[enrol]` token and the board has no
valid certificate, it makes the keys (if missing), pins the broker's CA by the
fingerprint in teiten.toml, presents the token, its CSR and its signing public key on the
enrolment listener, installs the certificate and the CA where `[uplink]` expects them,
removes the token from the card and writes `teiten-enrolment.txt` there.  Exit status: 0
the board has a valid certificate (enrolled now or before), 1 it has none (the units that
need one do not start: the board stays silent), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "enrol", help="at boot: enrol with the one-time token in teiten.toml (if needed)",
        description="Enrol this board with the token in teiten.toml's [enrol] table: "
        "docs/enrolment.md.")
    p.add_argument("--card", required=True,
                   help="the FAT partition: a directory, or an image/device[@@OFFSET] (mtools)")
    p.add_argument("--etc", default="/etc/teiten", help="config directory (default %(default)s)")
    p.add_argument("--no-chown", action="store_true", help="leave keys owned by the caller")
    p.add_argument("--timeout", type=float, default=60.0, help="wait this long for central")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_enrol)


@dataclass(frozen=True, slots=True)
class Outcome:
    enrolled: bool  # the board has a valid certificate now
    action: str  # enrolled | already | failed
    reason: str | None
    detail: str


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_enrol(card: Any, etc: Path, *, chown: bool = True, timeout: float = 60.0) -> Outcome:
    from sensor.core.enrol import Action, decide
    from sensor.edges.enrol import (
        CARD_RESULT,
        EnrolmentError,
        cert_validity,
        check_certificate,
        fetch_pinned_ca,
        install_certificate,
        parse_enrol_table,
        remove_token,
        result_text,
    )
    from sensor.edges.firstboot import CARD_CONFIG, BoardPaths, check_card_config, make_identity

    raw = card.read(CARD_CONFIG)
    if raw is None:
        return Outcome(False, "failed", "no_config", f"no {CARD_CONFIG} on the card")
    text = raw.decode("utf-8", errors="replace")
    checked = check_card_config(text, base_dir=etc)
    cfg = checked.config
    if not checked.ok or cfg is None or cfg.uplink is None:
        return Outcome(False, "failed", "bad_config", f"{CARD_CONFIG} is not valid or has no "
                       "[uplink]; `teiten firstboot` wrote teiten-error.txt")
    up = cfg.uplink
    validity = cert_validity(Path(up.cert)) if up.cert is not None else None
    settings, _found = parse_enrol_table(tomllib.loads(text).get("enrol"))
    d = decide(None if validity is None else validity[1], time.time(), settings is not None,
               cfg.sensor_id)
    if d.action in (Action.NOTHING, Action.TIDY):
        assert validity is not None
        if d.action is Action.TIDY:  # enrolled, but a power cut kept the token on the card
            card.write(CARD_CONFIG, remove_token(text).encode())
        return Outcome(True, "already", None, f"certificate {up.cert} valid until "
                       f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime(validity[1]))}")
    if d.action is Action.STUCK or settings is None:
        return Outcome(False, "failed", d.reason, d.detail)
    paths = BoardPaths(etc=etc, chown=chown)

    def fail(reason: str, detail: str) -> Outcome:
        card.write(CARD_RESULT, result_text(cfg.sensor_id, False, reason, detail,
                                            _utc()).encode())
        return Outcome(False, "failed", reason, detail)

    try:
        make_identity(cfg, paths)
        from sensor.edges.certs import load_tls_key
        from sensor.edges.keys import load_private_key
        from uplink.enrol import enrol_over_mqtt

        host = settings.host or up.host
        ca_pem = fetch_pinned_ca(host, settings.port, settings.ca_sha256)
        assert up.key is not None and up.cert is not None and up.ca is not None
        reply = enrol_over_mqtt(
            host=host, port=settings.port, ca_pem=ca_pem, token_id=settings.token_id,
            secret=settings.secret, sensor_id=cfg.sensor_id, csr=paths.csr.read_bytes(),
            signing_key=load_private_key(cfg.key), timeout=timeout)
        if not reply.ok or reply.certificate is None:
            return fail(reply.reason or "refused", reply.detail)
        cert = check_certificate(reply.certificate, ca_pem, load_tls_key(up.key), cfg.sensor_id)
    except EnrolmentError as exc:
        return fail(exc.reason, str(exc))
    install_certificate(Path(up.ca), ca_pem)
    install_certificate(Path(up.cert), reply.certificate)
    detail = (f"certificate {cert.serial_number:X} valid until "
              f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%MZ}")
    card.write(CARD_CONFIG, remove_token(text).encode())
    card.write(CARD_RESULT, result_text(cfg.sensor_id, True, "", detail, _utc()).encode())
    return Outcome(True, "enrolled", None, detail)


def cmd_enrol(args: argparse.Namespace) -> int:
    from sensor.edges.firstboot import CardError, open_card

    try:
        out = run_enrol(open_card(args.card), Path(args.etc), chown=not args.no_chown,
                        timeout=args.timeout)
    except CardError as exc:
        print(f"teiten enrol: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"enrolled": out.enrolled, "action": out.action,
                          "reason": out.reason, "detail": out.detail}, indent=2))
    else:
        stream = sys.stdout if out.enrolled else sys.stderr
        print(f"teiten enrol: {out.action}{': ' + out.reason if out.reason else ''}: "
              f"{out.detail}", file=stream)
    return EXIT_OK if out.enrolled else EXIT_FAILED
