"""Offline import: envelope files (or a board's spool directory) -> the store.

Strategy: every envelope goes through `central.receiver.Ingest.store_envelope`, the one
function the MQTT handler calls too, so the checks cannot differ: structural parse,
Ed25519 signature against sensors.toml (revoked sensors refused), decompression under the
cap, the summary check, and exactly once by (sensor, sequence).  Only the transport is
missing: there is no broker-authenticated topic, so the envelope's signed sensor id is
the only one (no `topic_mismatch` check), and there is no acknowledgement to send.
Rejections are recorded in `rejected` as the receiver records them, with the file's path
as the topic (`import:PATH`), and listed in the result with their reasons.

Writes are grouped: one transaction per `group` envelopes (the receiver commits each
message because it must acknowledge it; a file on disk can simply be imported again), so
a crash loses at most the open group, and a second import of the same files stores
nothing new (each is a `duplicate`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from central.receiver import Ingest

SPOOL_SUFFIX: Final = ".tenv"
MAX_FILE_BYTES: Final = 1 << 28  # an envelope is at most max_summary_bytes compressed


@dataclass(slots=True)
class ImportResult:
    files: int = 0
    stored: int = 0
    duplicate: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rejected:
            out[r["reason"]] = out.get(r["reason"], 0) + 1
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "stored": self.stored, "duplicate": self.duplicate,
                "rejected": len(self.rejected), "reasons": self.reasons(),
                "rejections": self.rejected, "unreadable": self.unreadable}


def envelope_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Each file given, and the `*.tenv` entries of each directory given (a board's spool:
    its `quarantine/` and the `.tmp-*` files of unfinished writes are not read), sorted."""
    for p in paths:
        if p.is_dir():
            yield from sorted(q for q in p.iterdir()
                              if q.suffix == SPOOL_SUFFIX and q.is_file()
                              and not q.name.startswith(".tmp-"))
        else:
            yield p


def import_envelopes(
    ingest: Ingest, paths: Iterable[Path], *, group: int = 500,
    progress: Callable[[int, ImportResult], None] | None = None,
) -> ImportResult:
    """Store every envelope in `paths` through the receiver's checks; returns the tally."""
    res = ImportResult()
    files = list(envelope_files(paths))
    store = ingest.store
    with store.batch():
        for i, path in enumerate(files, 1):
            res.files += 1
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    raise OSError(f"larger than {MAX_FILE_BYTES} bytes: not an envelope")
                payload = path.read_bytes()
            except OSError as exc:
                res.unreadable.append({"path": str(path), "error": str(exc)})
                continue
            v = ingest.store_envelope(payload, topic=f"import:{path}", claimed_sensor=None)
            if v.status == "stored":
                res.stored += 1
            elif v.status == "duplicate":
                res.duplicate += 1
            else:
                res.rejected.append({"path": str(path), "reason": v.reason,
                                     "sensor_id": v.sensor_id, "sequence": v.sequence,
                                     "detail": v.detail})
            if i % group == 0:
                store.commit_batch()
            if progress is not None:
                progress(len(files), res)
    return res
