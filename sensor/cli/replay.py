"""Sensor sub-commands of `teiten`: replay and show (the board's own commands)."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import sys

from sensor.core.limits import HOUR, Limits
from sensor.edges.durable import write_durably

# typing for type checkers only (start-up time: sensor/core/tuples.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import queue
    import threading
    from typing import Any, Final

    from sensor.edges.replay import EncodedSummary
    from wire.summary import Summary

DEFAULT_DARKNET = "198.51.100.0/24,2001:db8:dead::/48"
SENSOR_ID_HELP = "sensor id: lower-case letters, digits and '-', at most 63 characters"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay",
        help="replay pcap/pcapng files into hourly summaries",
        description="Read capture files, keep frames sent to the darknet, and write one "
        "summary per UTC hour into --out (and, with --key, signed envelopes into --spool).",
    )
    p.add_argument("pcaps", nargs="+", metavar="PCAP")
    p.add_argument("--darknet", default=DEFAULT_DARKNET, help="comma-separated CIDR blocks")
    p.add_argument("--out", help="directory for summary files (created if missing)")
    p.add_argument("--sensor-id", default="replay", help=SENSOR_ID_HELP)
    p.add_argument("--max-sources", type=int, default=Limits().max_sources)
    p.add_argument("--bucket-seconds", type=int, default=HOUR, help=argparse.SUPPRESS)
    p.add_argument("--key", help="Ed25519 signing key: also seal each summary into --spool")
    p.add_argument("--spool", help="spool directory for signed envelopes (with --key)")
    p.add_argument("--state", help="sequence state file (default: SPOOL/../sequence.state)")
    p.add_argument("--json", action="store_true", help="print a machine-readable result")
    p.add_argument("--reference", action="store_true",
                   help="use the pure-Python decode/aggregate path instead of the compiled one")
    # Its files are written and synced when it returns: no interpreter teardown after it
    # (sensor.cli.entry).
    p.set_defaults(handler=cmd_replay, exit_without_teardown=True)

    s = subparsers.add_parser("show", help="print a summary file")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--json", action="store_true", help="print the documented JSON view")
    s.add_argument("--top", type=int, default=10, help="rows per table in the text view")
    s.set_defaults(handler=cmd_show)


def _error(message: str) -> int:
    print(f"teiten: {message}", file=sys.stderr)
    return 1


class _SummaryNotWritten(Exception):
    """A summary file could not be written into --out (a full disk, a read-only or removed
    directory): the OSError, and the file it was for."""

    def __init__(self, path: str, error: OSError) -> None:
        super().__init__(path, error)
        self.path = path
        self.error = error


class _SummaryWriter:
    """Writes the summary files into --out in order, on a thread of its own: writing and
    syncing one (3-4 ms) would stop the count of the next hour, and at the end the last hours'
    files are written while the next is encoded.  At most WRITE_AHEAD summaries wait.

    `write` and `close` raise _SummaryNotWritten once a write failed; the files after it are
    not written (as if the replay had stopped there), the ones before it are kept.
    """

    WRITE_AHEAD = 4
    # What the first write imports (2-3 ms, while the first hour is counted: `replay` loads
    # them on its loading thread before that).
    IMPORTS: Final = ("queue", "threading")

    def __init__(self) -> None:
        self.written: list[str] = []  # the files written and synced, in order
        self._failure: _SummaryNotWritten | None = None
        self._queue: queue.Queue[tuple[str, bytes] | None] | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> queue.Queue[tuple[str, bytes] | None]:
        # threading and queue are imported when the first hour is written, not with this
        # module: `teiten replay` is counting by then (and has loaded them: IMPORTS).
        import queue
        import threading

        self._queue = queue.Queue(self.WRITE_AHEAD)
        self._thread = threading.Thread(target=self._run, args=(self._queue,),
                                        name="summary-writer", daemon=True)
        self._thread.start()
        return self._queue

    def _run(self, items: queue.Queue[tuple[str, bytes] | None]) -> None:
        while (item := items.get()) is not None:
            if self._failure is not None:
                continue  # drain: nothing after a failed file is written
            path, data = item
            try:
                write_durably(path, data)
            except OSError as exc:
                self._failure = _SummaryNotWritten(path, exc)
            except Exception as exc:  # a bug, MemoryError: stop writing; close() says so
                self._failure = _SummaryNotWritten(path, OSError(f"{type(exc).__name__}: {exc}"))
            else:
                self.written.append(path)

    def write(self, path: str, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        (self._queue or self._start()).put((path, data))

    def close(self) -> None:
        """Wait until every file handed over is written and synced (or one failed)."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = self._thread = None
        if self._failure is not None:
            raise self._failure


def parse_darknet(text: str) -> list[str]:
    blocks = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            blocks.append(str(ipaddress.ip_network(part, strict=True)))
        except ValueError as exc:
            raise ValueError(
                f"--darknet: {part!r} is not a network block ({exc}); "
                "give CIDRs such as 198.51.100.0/24 with no host bits set"
            ) from None
    if not blocks:
        raise ValueError("--darknet: give at least one CIDR block")
    return blocks


def summary_filename(summary: Summary | EncodedSummary) -> str:
    # wire.summary is imported by the functions that use it: `teiten replay` starts counting
    # before it is loaded (sensor/edges/replay.py loads it meanwhile).
    from wire.summary import iso_utc

    stamp = iso_utc(summary.hour_start * 1_000_000)[:19].replace("-", "").replace(":", "")
    return f"{summary.sensor_id}-{stamp}Z.summary"


def cmd_replay(args: argparse.Namespace) -> int:
    # Here, not at the top: the dispatcher imports this module for every command (it
    # registers `replay` and `show`), and only replay needs libpcap and the replay driver.
    from sensor.edges.pcap import CaptureFileError
    from sensor.edges.replay import Progress, ReplayStats, replay
    from wire.ids import validate_sensor_id

    try:
        darknet = parse_darknet(args.darknet)
        limits = Limits(max_sources=args.max_sources).check()
    except ValueError as exc:
        return _error(str(exc))
    if not args.out and not args.key:
        return _error("replay: give --out DIR for summaries, or --key and --spool for envelopes")
    if args.key and not args.spool:
        return _error("replay: --key needs --spool DIR to write signed envelopes into")
    try:
        validate_sensor_id(args.sensor_id)
    except ValueError as exc:
        return _error(str(exc))
    out: str | None = args.out or None  # os.path here and in durable: no pathlib at start-up
    if out is not None:
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            return _error(f"replay: cannot make --out {out}: {exc.strerror or exc}")
    sink = None
    # The spool and signing stack (cryptography) is imported only when it is used.
    spool_errors: tuple[type[Exception], ...] = ()
    if args.key:
        from sensor.edges.sequence import SequenceStateError
        from sensor.edges.spool import SpoolError

        spool_errors = (SpoolError, SequenceStateError)
        try:
            from sensor.edges.sealer import open_sealer

            sink = open_sealer(
                key_path=args.key, spool_dir=args.spool, sensor_id=args.sensor_id,
                state_path=args.state,
            )
        except (OSError, ValueError) as exc:
            return _error(f"replay: cannot prepare signing: {exc}")
    writer = _SummaryWriter()

    def emit(summary: Summary) -> None:
        from sensor.fast.pack import encode_summary  # loaded while counting: see above

        data = encode_summary(summary)
        if out is not None:
            path = os.path.join(out, summary_filename(summary))
            writer.write(path, data)
        if sink is not None:
            sink.seal_and_spool(summary, data)

    def emit_encoded(summary: EncodedSummary) -> None:  # no --key: the bytes are all it needs
        assert out is not None  # checked above: --out or --key
        path = os.path.join(out, summary_filename(summary))
        writer.write(path, summary.data)

    failure = None
    stats = ReplayStats()  # filled as the replay goes: its warnings survive an error
    # What start-up made lives as long as the process: the cyclic GC need not walk it again
    # each time new objects (with --key, the summaries' rows) trigger a collection.
    gc.freeze()
    try:
        try:
            # Without signing only the bytes are written: the compiled path then encodes
            # each hour straight from the kernel's tables, with no Python object per row.
            replay(
                args.pcaps, darknet=darknet, sensor_id=args.sensor_id,
                emit=emit if sink is not None else emit_encoded, encoded=sink is None,
                limits=limits, bucket_seconds=args.bucket_seconds, progress=Progress(),
                reference=args.reference, stats=stats,
                emit_imports=_SummaryWriter.IMPORTS if out is not None else (),
            )
        finally:
            writer.close()  # every summary handed over is on disk, or its error is raised
    except CaptureFileError as exc:
        failure = str(exc)
    except spool_errors as exc:
        # A full or failing spool disk: what was spooled before stays; say what to do.
        return _error(
            f"replay: cannot spool: {exc}. Free space or raise the spool bound, then replay "
            f"again: envelopes already in {args.spool} are kept"
        )
    except ValueError as exc:
        return _error(f"replay: {exc}")
    except _SummaryNotWritten as exc:
        kept = f"; the {len(writer.written)} written before it are kept" if writer.written else ""
        return _error(
            f"replay: cannot write {exc.path}: {exc.error.strerror or exc.error}. Free space "
            f"in (or fix) --out {out}, then replay again{kept}"
        )
    sealed = sink.sealed if sink is not None else 0
    written = writer.written
    result = {
        "summaries": written,
        "frames": None if failure else stats.frames,
        "envelopes": sealed,
        "warnings": stats.warnings,
        "uncounted": stats.uncounted,
        "error": failure,
    }
    if args.json:
        import json  # only for --json (start-up time: a plain replay does without it)

        print(json.dumps(result, indent=2))
    else:
        for path in written:
            print(path)
        if sink is not None:
            print(f"{sealed} signed envelopes in {args.spool}")
    for warning in stats.warnings:
        print(f"teiten: warning: {warning}", file=sys.stderr)
    if failure:
        print(f"teiten: {failure}", file=sys.stderr)
        if written or sealed:
            print(
                f"teiten: wrote {len(written) or sealed} summaries from the data before the "
                "error", file=sys.stderr,
            )
        return 1
    if stats.uncounted:
        n = stats.uncounted
        return _error(
            f"replay: {n} frame{'s' if n != 1 else ''} had a timestamp no summary can hold "
            f"(malformed bad_timestamp: before 1970, as libpcap reads a pcap stamp of "
            f"2038-01-19T03:14:08Z or later, or after 9999-12-30) and no frame with a valid "
            f"time came to count {'them' if n != 1 else 'it'} with: no summary was written; "
            f"check the capture's timestamps (`capinfos -ae FILE`)"
        )
    return 0


def load_summary(path: str) -> Summary:
    from wire.summary import decode_summary  # see summary_filename

    with open(path, "rb") as fh:
        return decode_summary(fh.read())


def cmd_show(args: argparse.Namespace) -> int:
    from wire.summary import SummaryFormatError, summary_to_json  # see summary_filename

    try:
        summary = load_summary(args.file)
    except OSError as exc:
        return _error(f"show: cannot read {args.file}: {exc.strerror}")
    except SummaryFormatError as exc:
        return _error(f"show: {args.file}: {exc}")
    view = summary_to_json(summary)
    if args.json:
        import json  # only for --json (start-up time: `teiten replay` does without it)

        json.dump(view, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(render_text(view, args.top))
    return 0


def render_text(view: dict[str, Any], top: int = 10) -> str:
    lines = [
        f"sensor {view['sensor_id']}  {view['hour_start']} .. {view['hour_end']}"
        + ("  (partial)" if view["health"].get("partial") else ""),
        f"packets {view['packets']:,}  bytes {view['bytes']:,}  sources "
        f"{view['sources_distinct']:,}{'~' if view['sources_distinct_estimated'] else ''}  "
        f"backscatter {view['backscatter']:,}  malformed {view['malformed_total']:,}  "
        f"overflow {view['sources_overflow']:,}",
        "fingerprints " + "  ".join(f"{k} {v:,}" for k, v in view["fingerprints"].items()),
        "",
        f"{'proto':>7} {'port':>6} {'packets':>10} {'sources':>8} {'backscatter':>11}",
    ]
    for row in view["by_port"][:top]:
        port = "-" if row["port"] is None else row["port"]
        lines.append(
            f"{row['proto']!s:>7} {port!s:>6} {row['packets']:>10,} {row['sources']:>8,} "
            f"{row['backscatter']:>11,}"
        )
    lines += ["", f"{'source':>39} {'packets':>10} {'ports':>6} {'ttl':>4}  fingerprints"]
    for row in view["sources"][:top]:
        lines.append(
            f"{row['ip']:>39} {row['packets']:>10,} {row['ports']:>6} {row['ttl']:>4}  "
            + ",".join(row["fingerprints"])
        )
    return "\n".join(lines)
