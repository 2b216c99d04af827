"""Online backup of the central database (SQLite's backup API, through `Store.backup`).

Strategy: copy page by page into `DEST.partial` while the receiver keeps writing (the
backup API restarts a step when the source changed under it, and WAL readers never block
the writer), check the copy with `PRAGMA integrity_check`, fsync it, then rename it to
`DEST`: a backup file that exists is whole.  Restoring is copying it back with the
receiver stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from central.store import Store, StoreError


def backup_database(
    src: Path, dest: Path, *, force: bool = False, pages: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Copy the database at `src` to `dest` online; returns `dest`."""
    if dest.exists() and not force:
        raise StoreError(f"{dest} exists; choose another name or pass --force")
    if not src.exists():
        raise StoreError(f"no database at {src}")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)

    def _progress(status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress(total - remaining, total)

    with Store(src) as store:
        store.backup(partial, pages=pages, progress=_progress)
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, dest)
    dfd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return dest
