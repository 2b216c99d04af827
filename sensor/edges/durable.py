"""Durable file writes: the one place that knows the power-cut-safe order of system calls.

temp file (O_EXCL) -> write all -> fsync(file) -> rename -> fsync(directory).  After
`write_durably` returns, the file is complete under its final name even if power is cut;
before it returns, the final name holds either the old content or nothing.  The spool, the
sequence state and the summary files of `teiten replay` all write through here, and
tests/privileged/test_spool_durability.py checks the order under strace.
"""

from __future__ import annotations

import contextlib
import os


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_durably(
    path: str | os.PathLike[str], data: bytes, *, tmp_name: str | None = None, mode: int = 0o644,
    exact_mode: bool = False,
) -> None:
    """Write `data` to `path` so that a crash leaves either no file or the whole file.

    The file gets `mode` less the umask, or exactly `mode` with `exact_mode` (set before it
    appears under its name: for files another user must read).
    OSError propagates (ENOSPC, EIO...); the temporary file is removed before it does.
    """
    # os.path, not pathlib: `teiten replay` writes through here and imports nothing else
    # that needs pathlib (about 2 ms of start-up with urllib.parse and fnmatch).
    final = os.fspath(path)
    parent, name = os.path.split(final)
    # A random part: a board's PIDs repeat after a reboot, and a stale temporary file left
    # by a power cut must never block the next write (O_EXCL).  os.urandom, which is what
    # secrets.token_hex reads (importing secrets loads hashlib and OpenSSL: 5 ms of start-up).
    tmp = os.path.join(parent, tmp_name or f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            if exact_mode:
                os.fchmod(fd, mode)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(parent or ".")
