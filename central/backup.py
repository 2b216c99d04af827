"""Online backup of the central database (SQLite's backup API, through `Store.backup`).

Strategy: copy into `DEST.partial` while the receiver keeps writing, in one backup step
(`pages=-1`): the step reads one consistent snapshot inside a read transaction, and in WAL
mode a reader never blocks the writer.  Copying in small steps would not do: the backup API
restarts from the first page whenever another connection writes between steps, so under a
steady receiver a stepped backup of a large file may never finish.  Then check the copy
with `PRAGMA integrity_check`, fsync it and rename it to `DEST`: a backup file that exists
is whole.  Restoring is copying it back with the receiver stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from central.store import Store, StoreError


def backup_database(
    src: Path, dest: Path, *, force: bool = False, pages: int = -1,
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
