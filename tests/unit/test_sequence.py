"""Sequence allocation: monotonic within a run, never repeated across crashes or lost state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sensor.edges import sequence as seqmod
from sensor.edges.sequence import SequenceAllocator, SequenceStateError


def _counter(seq: int) -> int:
    return seq & 0xFFFFFFFF


def test_monotonic_within_a_run_and_counter_continues_across_runs(tmp_path: Path) -> None:
    state = tmp_path / "seq.json"
    with SequenceAllocator(state) as alloc:
        assert alloc.state_lost  # first start ever
        first = [alloc.next() for _ in range(5)]
    assert first == sorted(first) and len({s >> 32 for s in first}) == 1
    assert [_counter(s) for s in first] == [0, 1, 2, 3, 4]
    with SequenceAllocator(state) as alloc:
        assert not alloc.state_lost
        second = [alloc.next() for _ in range(3)]
    assert [_counter(s) for s in second] == [5, 6, 7]  # clean close returns reservations
    assert not set(first) & set(second)


def test_state_is_persisted_before_the_number_is_used(tmp_path: Path) -> None:
    state = tmp_path / "seq.json"
    alloc = SequenceAllocator(state, block=4)
    seq = alloc.next()
    assert json.loads(state.read_text())["next"] > _counter(seq)
    for _ in range(4):
        seq = alloc.next()
        assert json.loads(state.read_text())["next"] > _counter(seq)


def test_crash_skips_but_never_repeats(tmp_path: Path) -> None:
    state = tmp_path / "seq.json"
    alloc = SequenceAllocator(state, block=10)
    used = [alloc.next() for _ in range(3)]
    # Simulate a crash: no close(), just drop the lock so another process may start.
    import os

    os.close(alloc._lock_fd)
    alloc._lock_fd = -1
    with SequenceAllocator(state, block=10) as again:
        nxt = again.next()
    assert _counter(nxt) == 10  # the reserved block was skipped
    assert nxt not in used


def test_a_second_allocator_on_the_same_state_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "seq.json"
    with SequenceAllocator(state), pytest.raises(SequenceStateError, match="in use"):
        SequenceAllocator(state)


def _run(state: Path, n: int) -> list[int]:
    with SequenceAllocator(state) as alloc:
        return [alloc.next() for _ in range(n)]


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "restore_old"])
def test_lost_or_restored_state_never_reuses_a_sequence(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "seq.json"
    seen: set[int] = set()
    old = tmp_path / "old-copy.json"
    for run in range(30):
        if run == 1:
            shutil.copy(state, old)
        if run and run % 3 == 0:
            if damage == "delete":
                state.unlink()
            elif damage == "truncate":
                state.write_bytes(state.read_bytes()[:5])
            elif damage == "garbage":
                state.write_bytes(b"\x00\xff not json")
            else:
                shutil.copy(old, state)
        got = _run(state, 7)
        assert not seen & set(got), f"run {run} reused a sequence after {damage}"
        seen.update(got)
    assert len(seen) == 30 * 7


def test_state_loss_is_reported(tmp_path: Path) -> None:
    state = tmp_path / "seq.json"
    _run(state, 1)
    state.write_text("{")
    with SequenceAllocator(state) as alloc:
        assert alloc.state_lost
        assert _counter(alloc.next()) == 0


def test_even_an_epoch_collision_does_not_repeat_while_state_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worst case for the random epoch: every run draws the same one.
    monkeypatch.setattr(seqmod.secrets, "randbits", lambda bits: 42)
    state = tmp_path / "seq.json"
    seen: set[int] = set()
    for _ in range(10):
        got = _run(state, 5)
        assert not seen & set(got)
        seen.update(got)


def test_counter_wrap_starts_a_new_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "seq.json"
    state.write_text(json.dumps({"format": 1, "next": seqmod.COUNTER_LIMIT - 2}))
    epochs = iter([7, 8])
    monkeypatch.setattr(seqmod.secrets, "randbits", lambda bits: next(epochs))
    with SequenceAllocator(state) as alloc:
        got = [alloc.next() for _ in range(3)]
    assert got == [(7 << 32) | 0xFFFFFFFE, (7 << 32) | 0xFFFFFFFF, 8 << 32]


def test_persist_failure_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    alloc = SequenceAllocator(tmp_path / "seq.json")

    def enospc(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(seqmod.os, "write", enospc)
    with pytest.raises(SequenceStateError, match="free space"):
        alloc.next()
    monkeypatch.undo()
    # Nothing was handed out, so the next number is still the first.
    assert _counter(alloc.next()) == 0
    alloc.close()
