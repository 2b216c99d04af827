"""A power-cut-safe, bounded spool of envelope files.

Strategy: one file per envelope, named `HHHHHHHHHHHHHHHH-SSSSSSSSSSSSSSSS.tenv` (hour start and
sequence as 16 lower-case hex digits), so a plain sort of the names is the order (hour,
sequence) and no index file can disagree with the directory.  A write goes to a dot-named
temporary file opened with O_EXCL, is written in full and fsynced, renamed to its final name,
and then the directory is fsynced: after `write` returns, the envelope survives a power cut,
and at no moment does a final name hold a partial envelope.

Lifecycle of an entry (docs/spool.md):
    temporary --rename--> spooled --remove (central acknowledged)--> gone
                                 \\--evict (spool over its bound, oldest first)--> gone
                                 \\--scan finds it corrupt--> quarantine/
    temporary --scan after a crash--> deleted (it was never reported written)

Bounds: the spool holds at most `max_bytes` of envelopes.  A write that would go over the
bound first evicts the oldest entries; the count and hours evicted, and anything
quarantined, are kept in `health.json` (durably, so a restart does not lose them) until
`take_evictions` hands them to the next summary's health map.  A full disk is not the bound:
it raises `SpoolFullError` and evicts nothing, so what was spooled stays spooled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sensor.edges.durable import fsync_dir, write_durably
from wire.envelope import EnvelopeError, parse_envelope

# A busy /24 hour (100,000 packets, 20,000 sources) seals to 355,779 bytes
# (bench/bench_envelope.py), so 7 days x 24 h is 59.8 MB; 256 MiB holds 4.5 such weeks.
# A /16 at the source cap needs ~848 MB for a week: set max_bytes (docs/spool.md).
DEFAULT_SPOOL_BYTES: Final = 256 * 1024 * 1024
SUFFIX: Final = ".tenv"
QUARANTINE_DIR: Final = "quarantine"
HEALTH_FILE: Final = "health.json"
_NAME_RE: Final = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.tenv")
_TMP_PREFIX: Final = ".tmp-"
# Hours listed in the health map are capped so a long outage cannot bloat a summary;
# the count is always exact.
MAX_REPORTED_HOURS: Final = 1000


class SpoolError(Exception):
    """Base of spool failures; messages say what to do next."""


class SpoolFullError(SpoolError):
    """No room: the disk is full, or one envelope is larger than the whole bound."""


class SpoolWriteError(SpoolError):
    """An I/O error while writing; earlier entries are untouched."""


@dataclass(frozen=True, slots=True, order=True)
class SpoolEntry:
    """One spooled envelope; orders by (hour_start, sequence) like its name."""

    hour_start: int
    sequence: int
    name: str = field(compare=False)
    path: Path = field(compare=False)
    size: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class ScanReport:
    """What `scan` did: names moved to quarantine/ and temporary files deleted."""

    quarantined: tuple[str, ...]
    removed_temporary: tuple[str, ...]
    intact: int


def entry_name(hour_start: int, sequence: int) -> str:
    return f"{hour_start:016x}-{sequence:016x}{SUFFIX}"


def parse_entry_name(name: str) -> tuple[int, int] | None:
    m = _NAME_RE.fullmatch(name)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


def _landed(final: Path, size: int) -> bool:
    try:
        return final.stat().st_size == size
    except OSError:
        return False


# The capture daemon (user teiten) writes the spool and the uplink (user teiten-uplink,
# group teiten) reads and removes from it: files are group-readable, directories
# group-writable, whatever the umask; neither can read the other's private key.
FILE_MODE: Final = 0o640
DIR_MODE: Final = 0o770


def _durable_write(directory: Path, final: Path, data: bytes, tmp_name: str) -> None:
    write_durably(final, data, tmp_name=tmp_name, mode=FILE_MODE, exact_mode=True)


class Spool:
    """A directory of envelopes; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = DEFAULT_SPOOL_BYTES,
        *,
        scan: bool = True,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("spool max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        # quarantine/ holds envelopes central refused for good and files a power cut left
        # corrupt: kept for an operator, but bounded too (oldest deleted, counted).
        self.max_quarantine_bytes = max(max_bytes // 4, 1 << 20)
        self.quarantine_path = self.path / QUARANTINE_DIR
        try:
            for d in (self.path, self.quarantine_path):
                if not d.is_dir():
                    d.mkdir(parents=True, exist_ok=True)
                    os.chmod(d, DIR_MODE)  # ours, just made: group-writable for the uplink
        except OSError as exc:
            raise SpoolWriteError(
                f"cannot create spool directory {self.quarantine_path}: {exc.strerror}; "
                "check the path and its permissions"
            ) from None
        self._health: dict[str, Any] = self._load_health()
        if scan:
            self.scan()

    # -- reading -----------------------------------------------------------------------

    def entries(self) -> list[SpoolEntry]:
        """Spooled envelopes, oldest (hour, sequence) first."""
        found: list[SpoolEntry] = []
        with os.scandir(self.path) as it:
            for de in it:
                parsed = parse_entry_name(de.name)
                if parsed is None:
                    continue
                try:
                    size = de.stat(follow_symlinks=False).st_size
                except FileNotFoundError:  # removed concurrently (acknowledged)
                    continue
                found.append(SpoolEntry(parsed[0], parsed[1], de.name, Path(de.path), size))
        found.sort()
        return found

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def read(self, entry: SpoolEntry) -> bytes:
        try:
            return entry.path.read_bytes()
        except OSError as exc:
            raise SpoolError(f"cannot read spooled {entry.name}: {exc.strerror}") from None

    # -- writing -----------------------------------------------------------------------

    def write(self, envelope_bytes: bytes, hour_start: int, sequence: int) -> SpoolEntry:
        """Durably add one envelope, evicting the oldest entries if over the bound.

        When this returns, the envelope is on stable storage under its final name.
        """
        size = len(envelope_bytes)
        if size > self.max_bytes:
            raise SpoolFullError(
                f"envelope of {size} bytes is larger than the whole spool bound "
                f"({self.max_bytes} bytes); raise the spool max_bytes setting"
            )
        name = entry_name(hour_start, sequence)
        final = self.path / name
        if final.exists():
            raise SpoolWriteError(
                f"{final} already exists: sequence {sequence} was reused; "
                "this is a bug, report it with the sequence state file"
            )
        self._evict_for(size)
        tmp_name = f"{_TMP_PREFIX}{name}.{secrets.token_hex(4)}"
        try:
            _durable_write(self.path, final, envelope_bytes, tmp_name)
        except OSError as exc:
            if _landed(final, size):
                # Failed after the rename (the directory fsync): the envelope is complete
                # under its final name.  Reporting a failure would make the caller seal the
                # same hour again under a new sequence, and central would count it twice.
                return SpoolEntry(hour_start, sequence, name, final, size)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(
                    f"no space left on the file system of {self.path} while spooling "
                    f"{name} ({size} bytes); {len(self.entries())} earlier envelopes are "
                    "kept. Free space there, or lower the spool max_bytes below the free "
                    "space so the spool evicts instead"
                ) from None
            raise SpoolWriteError(
                f"I/O error spooling {name} in {self.path}: {exc.strerror}; earlier "
                "envelopes are kept. Check the storage (dmesg) and the spool directory"
            ) from None
        return SpoolEntry(hour_start, sequence, name, final, size)

    def _evict_for(self, incoming: int) -> None:
        entries = self.entries()
        total = sum(e.size for e in entries)
        evicted: list[SpoolEntry] = []
        for entry in entries:
            if total + incoming <= self.max_bytes:
                break
            try:
                entry.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise SpoolWriteError(
                    f"cannot evict {entry.name} from {self.path}: {exc.strerror}"
                ) from None
            total -= entry.size
            evicted.append(entry)
        if evicted:
            fsync_dir(self.path)
            self._health["spool_evicted"] += len(evicted)
            hours = set(self._health["spool_evicted_hours"])
            hours.update(e.hour_start for e in evicted)
            self._health["spool_evicted_hours"] = sorted(hours)[-MAX_REPORTED_HOURS:]
            self._save_health()

    def remove(self, entry: SpoolEntry) -> None:
        """Delete an entry after central confirmed it stored it (missing is fine)."""
        try:
            entry.path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SpoolError(f"cannot remove {entry.name}: {exc.strerror}") from None
        fsync_dir(self.path)

    # -- recovery ----------------------------------------------------------------------

    def scan(self) -> ScanReport:
        """Delete leftover temporaries; quarantine entries that do not parse.

        Never raises for a bad entry: a power cut must not stop the sensor.
        """
        quarantined: list[str] = []
        removed: list[str] = []
        intact = 0
        with os.scandir(self.path) as it:
            names = [de.name for de in it if de.is_file(follow_symlinks=False)]
        for name in sorted(names):
            path = self.path / name
            if name.startswith(_TMP_PREFIX):
                try:
                    path.unlink()
                    removed.append(name)
                except OSError:
                    pass
                continue
            parsed = parse_entry_name(name)
            if parsed is None:
                continue
            problem = self._check(path, parsed)
            if problem is None:
                intact += 1
                continue
            if self.quarantine(path, problem) is not None:
                quarantined.append(name)
        if quarantined or removed:
            fsync_dir(self.path)
        if quarantined:
            fsync_dir(self.quarantine_path)
            self._health["spool_quarantined"] += len(quarantined)
            files = self._health["spool_quarantined_files"] + quarantined
            self._health["spool_quarantined_files"] = files[-MAX_REPORTED_HOURS:]
            self._save_health()
        return ScanReport(tuple(quarantined), tuple(removed), intact)

    @staticmethod
    def _check(path: Path, parsed: tuple[int, int]) -> str | None:
        try:
            env = parse_envelope(path.read_bytes())
        except EnvelopeError as exc:
            return str(exc)
        except OSError as exc:
            return exc.strerror or "unreadable"
        if (env.hour_start, env.sequence) != parsed:
            return "name does not match the envelope's hour and sequence"
        return None

    def quarantine(self, path: Path, reason: str | None = None) -> Path | None:
        """Move a spool file to quarantine/ (with a `.reason` file), keeping quarantine/
        under its bound by deleting the oldest there.  Returns the new path, or None."""
        target = self.quarantine_path / path.name
        if target.exists():
            target = self.quarantine_path / f"{path.name}.{secrets.token_hex(4)}"
        try:
            os.rename(path, target)
            if reason is not None:
                note = self.quarantine_path / f"{target.name}.reason"
                note.write_text(reason + "\n")
                with contextlib.suppress(OSError):  # someone else's note: leave its mode
                    os.chmod(note, FILE_MODE)
        except OSError:
            return None
        self._bound_quarantine()
        return target

    def quarantined(self) -> list[Path]:
        """Files in quarantine/ (not their `.reason` notes), oldest name first."""
        try:
            names = sorted(os.listdir(self.quarantine_path))
        except OSError:
            return []
        return [self.quarantine_path / n for n in names if not n.endswith(".reason")]

    def _bound_quarantine(self) -> None:
        files = self.quarantined()
        sizes = {}
        for f in files:
            with contextlib.suppress(OSError):
                sizes[f] = f.stat().st_size
        total = sum(sizes.values())
        for f in files:
            if total <= self.max_quarantine_bytes:
                break
            with contextlib.suppress(OSError):
                f.unlink()
                (f.parent / f"{f.name}.reason").unlink(missing_ok=True)
                total -= sizes.get(f, 0)
                self._health["spool_quarantine_evicted"] += 1

    def requeue(self, names: list[str] | None = None) -> list[SpoolEntry]:
        """Move quarantined envelopes back into the spool (all, or the named ones) once an
        operator has fixed what made central reject them.  Files that are not whole
        envelopes stay where they are."""
        moved = []
        for path in self.quarantined():
            if names is not None and path.name not in names:
                continue
            name = path.name if parse_entry_name(path.name) else path.name.rsplit(".", 1)[0]
            parsed = parse_entry_name(name)
            final = self.path / name
            if parsed is None or final.exists() or self._check(path, parsed) is not None:
                continue
            try:
                os.rename(path, final)
            except OSError:
                continue
            (self.quarantine_path / f"{path.name}.reason").unlink(missing_ok=True)
            moved.append(SpoolEntry(parsed[0], parsed[1], name, final, final.stat().st_size))
        if moved:
            fsync_dir(self.path)
            fsync_dir(self.quarantine_path)
        return moved

    # -- health ------------------------------------------------------------------------

    @staticmethod
    def _empty_health() -> dict[str, Any]:
        return {
            "spool_evicted": 0,
            "spool_evicted_hours": [],
            "spool_quarantined": 0,
            "spool_quarantined_files": [],
            "spool_quarantine_evicted": 0,
        }

    def _load_health(self) -> dict[str, Any]:
        health = self._empty_health()
        try:
            doc = json.loads((self.path / HEALTH_FILE).read_bytes())
        except (OSError, ValueError):
            return health
        if isinstance(doc, dict):
            for key, default in health.items():
                value = doc.get(key)
                if type(value) is type(default):
                    health[key] = value
        return health

    def _save_health(self) -> None:
        data = json.dumps(self._health, sort_keys=True).encode()
        tmp_name = f"{_TMP_PREFIX}{HEALTH_FILE}.{secrets.token_hex(4)}"
        # On failure the counts stay in memory; losing them on a crash is the lesser harm.
        with contextlib.suppress(OSError):
            _durable_write(self.path, self.path / HEALTH_FILE, data, tmp_name)

    def pending_health(self) -> dict[str, Any]:
        """What `take_evictions` would return, without resetting it."""
        return json.loads(json.dumps(self._health))  # type: ignore[no-any-return]

    def return_evictions(self, fragment: dict[str, Any]) -> None:
        """Put back a fragment from `take_evictions` that could not be delivered."""
        self._health["spool_evicted"] += int(fragment.get("spool_evicted", 0))
        self._health["spool_quarantined"] += int(fragment.get("spool_quarantined", 0))
        self._health["spool_quarantine_evicted"] += int(
            fragment.get("spool_quarantine_evicted", 0)
        )
        hours = set(self._health["spool_evicted_hours"])
        hours.update(fragment.get("spool_evicted_hours", []))
        self._health["spool_evicted_hours"] = sorted(hours)[-MAX_REPORTED_HOURS:]
        files = list(fragment.get("spool_quarantined_files", []))
        files += self._health["spool_quarantined_files"]
        self._health["spool_quarantined_files"] = files[-MAX_REPORTED_HOURS:]
        self._save_health()

    def take_evictions(self) -> dict[str, Any]:
        """Health-map fragment for the next summary; resets the counts.

        Keys: spool_evicted (int), spool_evicted_hours (hour starts), spool_quarantined
        (int), spool_quarantined_files (names now in quarantine/), spool_quarantine_evicted
        (int: quarantined files deleted to keep quarantine/ under its bound).
        """
        taken = self.pending_health()
        self._health = self._empty_health()
        try:
            (self.path / HEALTH_FILE).unlink()
            fsync_dir(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            self._save_health()
        return taken
