"""systemd's sd_notify protocol: a datagram to $NOTIFY_SOCKET, no libsystemd needed.

`notify("READY=1")`, `notify("WATCHDOG=1")`, `notify("STOPPING=1")`, `notify("STATUS=...")`.
Sends never block (a full socket drops the message and returns False).
Without $NOTIFY_SOCKET (not under systemd, or Type=simple) every call is a no-op returning
False.  `watchdog_interval_s()` is half of $WATCHDOG_USEC (systemd's advice), or None.
"""

from __future__ import annotations

import os
import socket


def notify(state: str, *, env: dict[str, str] | None = None) -> bool:
    """Send `state` to systemd; True if it was sent."""
    e = os.environ if env is None else env
    path = e.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            # never block: a notify socket nobody reads must not stall the daemon's timer
            s.send(state.encode(), socket.MSG_DONTWAIT)
    except OSError:
        return False
    return True


def watchdog_interval_s(*, env: dict[str, str] | None = None) -> float | None:
    """How often to send WATCHDOG=1 (half the configured WatchdogSec), or None."""
    e = os.environ if env is None else env
    usec = e.get("WATCHDOG_USEC")
    pid = e.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
