"""The virtual board, kept under its old name: `VirtualBoard(topology)` is now
`hil.lab.Board(NetnsTarget(), topology)` (hil/targets/netns.py), and the users helpers stay
here for the tests that create the fault themselves (tests/privileged/test_doctor.py)."""

from __future__ import annotations

import pwd
import subprocess

from hil.lab import Board, StoredSummary, add_truths, totals, wait_for
from hil.targets.base import UPLINK_USER, USER

__all__ = ["Board", "StoredSummary", "VirtualBoard", "add_truths", "ensure_uplink_user",
           "ensure_user", "totals", "wait_for"]


def _sh(*cmd: str) -> None:
    subprocess.run(list(cmd), check=True, capture_output=True, timeout=30)


def ensure_user() -> tuple[int, int]:
    """The daemon's user `teiten` (and its group), as board/rpi/teiten.sysusers makes it."""
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        _sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
            "--user-group", USER)
        pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid


def ensure_uplink_user() -> int:
    """The uplink's user `teiten-uplink`, primary group `teiten` (teiten.sysusers)."""
    ensure_user()
    try:
        pw = pwd.getpwnam(UPLINK_USER)
    except KeyError:
        _sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
            "--gid", USER, UPLINK_USER)
        pw = pwd.getpwnam(UPLINK_USER)
    return pw.pw_uid


def VirtualBoard(topology: str = "routed", *, clock_offset: bool = False) -> Board:
    from hil.targets.netns import NetnsTarget

    return Board(NetnsTarget(), topology, clock_offset=clock_offset)
