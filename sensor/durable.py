"""Durable file writes: the one place that knows the power-cut-safe order of system calls.

temp file (O_EXCL) -> write all -> fsync(file) -> rename -> fsync(directory).  After
`write_durably` returns, the file is complete under its final name even if power is cut;
before it returns, the final name holds either the old content or nothing.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_durably(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write `data` to `path` so that a crash leaves either no file or the whole file."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
