"""Spool durability with real processes, real system calls and a real full file system.

- SIGKILL a writer at random moments over hundreds of writes: no final name ever holds a
  partial envelope, everything reported written is intact, no sequence repeats.
- SIGKILL keeps the page cache, so that test cannot see a missing fsync: a second test reads
  the system calls themselves under strace and checks the durable order
  (write -> fsync(file) -> rename -> fsync(directory)), and that the sequence state is
  fsynced before the envelope that uses it is written.
- A 1 MiB tmpfs fills up: a clear SpoolFullError, and what was spooled stays intact.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.edges.spool import Spool, SpoolFullError, parse_entry_name
from wire import envelope as ev
from wire.keys import Keyring, public_key_text

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parents[2]
SEED_HEX = hashlib.sha256(b"teiten durability test key").hexdigest()

WRITER = r"""
import hashlib, random, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
sys.path.insert(0, sys.argv[1] + "/tests/vectors")
import make_envelope_vectors as mv
from sensor.edges.sequence import SequenceAllocator
from sensor.edges.spool import Spool
from wire.summary import encode_summary
from wire.envelope import seal

spool_dir, state, count, seed_hex = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
spool = Spool(spool_dir)
alloc = SequenceAllocator(state)
rnd = random.Random()
summaries = [encode_summary(mv.make_summary(hour_start=mv.HOUR + 3600 * i, sources=s, seed=i))
             for i, s in enumerate((5, 50, 400))]
print("READY", flush=True)
for i in range(count):
    k = rnd.randrange(len(summaries))
    seq = alloc.next()
    hour = mv.HOUR + 3600 * k
    env = seal(summaries[k], sensor_id=mv.SENSOR_ID, sequence=seq, hour_start=hour,
               created_us=i, key=key)
    entry = spool.write(env, hour, seq)
    sys.stdout.write(f"WROTE {entry.name} {hashlib.sha256(env).hexdigest()}\n")
    sys.stdout.flush()
alloc.close()
"""


def _keyring() -> Keyring:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEED_HEX))
    return Keyring.from_mapping({"vector-01": public_key_text(key.public_key())})


def _writer_cmd(tmp_path: Path, spool_dir: Path, state: Path, count: int) -> list[str]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return [sys.executable, str(script), str(ROOT), str(spool_dir), str(state), str(count),
            SEED_HEX]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sigkill_at_random_moments_never_leaves_a_partial_or_repeated_envelope(
    tmp_path: Path,
) -> None:
    spool_dir, state = tmp_path / "spool", tmp_path / "sequence.state"
    cmd = _writer_cmd(tmp_path, spool_dir, state, 100_000)
    keyring = _keyring()
    rnd = random.Random(1234)
    reported: dict[str, str] = {}
    checked: dict[str, int] = {}  # name -> sequence, for files already verified
    kills = 0
    deadline = time.monotonic() + 50
    while (len(reported) < 250 or kills < 30) and time.monotonic() < deadline:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=_env(), text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(rnd.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        kills += 1
        assert proc.returncode == -signal.SIGKILL
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "WROTE":
                assert parts[1] not in reported, "a final name was written twice"
                reported[parts[1]] = parts[2]
        _check_spool(spool_dir, reported, checked, keyring)
    assert kills >= 30 and len(reported) >= 200, (kills, len(reported))
    print(f"{kills} kills, {len(reported)} writes reported")
    # Every file ever seen is still there and unchanged.
    _check_spool(spool_dir, reported, {}, keyring)
    # The next start scans: leftovers of killed writes are removed, nothing is quarantined.
    spool = Spool(spool_dir)
    assert not any(n.startswith(".tmp-") for n in os.listdir(spool_dir))
    assert os.listdir(spool_dir / "quarantine") == []
    assert spool.take_evictions()["spool_quarantined"] == 0


def _check_spool(
    spool_dir: Path, reported: dict[str, str], checked: dict[str, int], keyring: Keyring
) -> None:
    """Verify files not checked before (right after each kill); checks sequences are unique."""
    names = [n for n in os.listdir(spool_dir) if parse_entry_name(n) is not None]
    sequences = set(checked.values())
    for name in names:
        if name in checked:
            continue
        data = (spool_dir / name).read_bytes()
        env = ev.verify_envelope(data, keyring).envelope  # no partial envelope, ever
        assert (env.hour_start, env.sequence) == parse_entry_name(name)
        assert env.sequence not in sequences, "sequence repeated"
        sequences.add(env.sequence)
        checked[name] = env.sequence
        if name in reported:
            assert hashlib.sha256(data).hexdigest() == reported[name]
    missing = set(reported) - set(names)
    assert not missing, f"reported written but gone: {sorted(missing)[:3]}"


STRACE_LINE = re.compile(r"^(?P<call>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is installed by make test")
def test_system_call_order_is_durable(tmp_path: Path) -> None:
    spool_dir, state = tmp_path / "spool", tmp_path / "sequence.state"
    spool_dir.mkdir()
    trace = tmp_path / "trace.txt"
    cmd = ["strace", "-f", "-qq", "-y", "-s", "256", "-o", str(trace), "-e",
           "trace=openat,write,fsync,fdatasync,close,rename,renameat,renameat2"]
    cmd += _writer_cmd(tmp_path, spool_dir, state, 5)
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, timeout=60)
    calls = []
    for raw in trace.read_text().splitlines():
        line = raw.split(None, 1)[1] if raw[:1].isdigit() else raw  # drop the pid
        m = STRACE_LINE.match(line)
        if m:
            calls.append((m["call"], m["args"], int(m["ret"])))
    names = sorted(n for n in os.listdir(spool_dir) if parse_entry_name(n))
    assert len(names) == 5
    for name in names:
        _check_envelope_calls(calls, spool_dir, name)
    # The sequence is durable before the envelope that carries it is written.
    state_fsyncs = [i for i, c in enumerate(calls)
                    if c[0] == "fsync" and ".sequence.state." in c[1] and ".tmp" in c[1]]
    state_renames = [i for i, c in enumerate(calls)
                     if c[0].startswith("rename") and "sequence.state" in c[1]]
    first_tmp = [i for i, c in enumerate(calls)
                 if c[0] == "openat" and f"{spool_dir}/.tmp-" in c[1] and "O_EXCL" in c[1]]
    assert len(state_fsyncs) >= 5 and len(first_tmp) == 5
    for k, open_at in enumerate(first_tmp):
        assert state_fsyncs[k] < state_renames[k] < open_at


def _check_envelope_calls(
    calls: list[tuple[str, str, int]], spool_dir: Path, name: str
) -> None:
    tmp_marker = f"{spool_dir}/.tmp-{name}."
    opened = [i for i, (c, a, r) in enumerate(calls)
              if c == "openat" and tmp_marker in a and "O_EXCL" in a and r >= 0]
    assert len(opened) == 1, name
    start = opened[0]
    fd = calls[start][2]
    fd_tag = f"{fd}<{spool_dir}/.tmp-{name}."
    writes = [i for i in range(start, len(calls))
              if calls[i][0] == "write" and calls[i][1].startswith(fd_tag)]
    fsyncs = [i for i in range(start, len(calls))
              if calls[i][0] == "fsync" and calls[i][1].startswith(fd_tag)]
    renames = [i for i in range(start, len(calls))
               if calls[i][0].startswith("rename") and tmp_marker in calls[i][1]
               and f"{spool_dir}/{name}" in calls[i][1].replace(tmp_marker, "")]
    assert writes and fsyncs and renames, name
    rename = renames[0]
    dir_fsyncs = [i for i in range(rename, len(calls))
                  if calls[i][0] == "fsync" and calls[i][1].endswith(f"<{spool_dir}>")]
    assert dir_fsyncs, f"no directory fsync after renaming {name}"
    # ... and all of it before Spool.write returned (the writer reports right after).
    reports = [i for i in range(start, len(calls))
               if calls[i][0] == "write" and f"WROTE {name}" in calls[i][1]]
    assert reports, name
    assert max(writes) < fsyncs[0] < rename < dir_fsyncs[0] < reports[0], name
    # Nothing else is written to the file after its fsync.
    assert not [i for i in writes if i > fsyncs[0]]


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_gives_a_clear_error_and_keeps_what_was_spooled(
    small_tmpfs: Path, tmp_path: Path
) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "vectors"))
    import make_envelope_vectors as mv
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from wire.summary import encode_summary

    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEED_HEX))
    keyring = _keyring()
    spool = Spool(small_tmpfs / "spool")  # default bound, far above 1 MiB
    written = {}
    error = None
    for i in range(200):
        hour = mv.HOUR + 3600 * i
        data = encode_summary(mv.make_summary(hour_start=hour, sources=1500, seed=i))
        env = ev.seal(data, sensor_id="vector-01", sequence=i, hour_start=hour,
                      created_us=0, key=key)
        try:
            entry = spool.write(env, hour, i)
        except SpoolFullError as exc:
            error = str(exc)
            break
        written[entry.name] = env
    assert error is not None and "no space left" in error and "Free space" in error
    assert len(written) >= 3
    # Everything spooled before the failure is intact and verifies; no temporary remains.
    entries = spool.entries()
    assert [e.name for e in entries] == sorted(written)
    for entry in entries:
        assert spool.read(entry) == written[entry.name]
        ev.verify_envelope(spool.read(entry), keyring)
    assert not [n for n in os.listdir(spool.path) if n.startswith(".tmp-")]
    assert spool.take_evictions()["spool_evicted"] == 0  # a full disk evicts nothing
    # Once central acknowledges (removes) one, there is room again.
    spool.remove(entries[0])
    spool.remove(entries[1])
    hour = mv.HOUR + 3600 * 500
    env = ev.seal(encode_summary(mv.make_summary(hour_start=hour, sources=10)),
                  sensor_id="vector-01", sequence=500, hour_start=hour, created_us=0, key=key)
    spool.write(env, hour, 500)
