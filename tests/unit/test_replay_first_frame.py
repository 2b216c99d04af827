"""`teiten replay` starts counting before the output side is imported: the modules on the
way to its first frame must not pull in the summary format, the reference core or the
dataclasses module (sensor/edges/replay.py loads those on a thread while the kernel counts;
tests/integration/test_replay_startup.py checks what a replay never loads at all).
Each check runs in a fresh interpreter, since this one has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.core.limits import LIMIT_FIELDS, Limits
from sensor.edges import replay as replay_edge

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample.pcap"

# What `teiten replay` imports before its first feed_file call.
BEFORE_COUNTING = ("sensor.cli", "sensor.cli.replay", "sensor.core.bpf", "sensor.core.limits",
                   "sensor.core.linktypes", "sensor.edges.durable", "sensor.edges.pcap",
                   "sensor.edges.replay", "sensor.fast.kernel", "wire.ids")
# What they must leave for later.
OUTPUT_SIDE = ("dataclasses", "msgpack", "datetime", "wire.summary", "sensor.core.aggregate",
               "sensor.core.decode", "sensor.core.records", "sensor.fast.pack")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_the_way_to_the_first_frame_imports_no_output_side() -> None:
    loaded = _modules_after("\n".join(f"import {name}" for name in BEFORE_COUNTING))
    assert not loaded & set(OUTPUT_SIDE)


def test_the_way_to_the_first_frame_imports_no_typing() -> None:
    """4-7 ms of start-up: those modules take NamedTuple from sensor.core.tuples and name
    the rest of typing under TYPE_CHECKING only."""
    loaded = _modules_after("\n".join(f"import {name}" for name in BEFORE_COUNTING))
    assert "typing" not in loaded


def test_the_output_side_is_loaded_in_the_background() -> None:
    loaded = _modules_after(
        "import time, sys\n"
        "from sensor.edges.replay import _OUTPUT_MODULES, _load_in_background\n"
        "_load_in_background(_OUTPUT_MODULES)\n"
        "deadline = time.monotonic() + 30\n"
        "while (not all(m in sys.modules for m in _OUTPUT_MODULES)\n"
        "       and time.monotonic() < deadline):\n"
        "    time.sleep(0.01)\n"
        "time.sleep(0.2)\n"
    )
    assert set(replay_edge._OUTPUT_MODULES) <= loaded


def test_a_module_that_fails_to_load_is_left_to_the_import_that_needs_it() -> None:
    loaded = _modules_after(
        "import time\n"
        "from sensor.edges.replay import _load_in_background\n"
        "_load_in_background(('sensor.no_such_module', 'wire.summary'))\n"
        "time.sleep(0.5)\n"
    )
    assert "wire.summary" not in loaded  # the thread stopped at the failure, quietly


def test_a_fresh_replay_writes_what_this_process_writes(tmp_path: Path) -> None:
    """The summaries do not depend on whether the loading thread got there first: a fresh
    interpreter's replay (the thread races the first hour) equals this process's."""
    fresh, here = tmp_path / "fresh", tmp_path / "here"
    subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(SAMPLE), "--out", str(fresh)],
                   cwd=ROOT, check=True, capture_output=True)
    from sensor.cli import main

    assert main(["replay", str(SAMPLE), "--out", str(here)]) == 0
    names = sorted(p.name for p in fresh.iterdir())
    assert names and names == sorted(p.name for p in here.iterdir())
    assert all((fresh / n).read_bytes() == (here / n).read_bytes() for n in names)


def test_limits_check_names_the_bound() -> None:
    assert Limits().check() == Limits()
    assert Limits().values() == tuple(getattr(Limits(), name) for name in LIMIT_FIELDS)
    with pytest.raises(ValueError, match="max_sources must be at least 1"):
        Limits(max_sources=0).check()
    with pytest.raises(ValueError, match="limit port_exact_limit must not be negative"):
        Limits(port_exact_limit=-1).check()
    with pytest.raises(ValueError, match=r"limit overflow_sketch_p is a sketch precision: 4\.\.16"):
        Limits(overflow_sketch_p=17).check()


def test_every_aggregator_checks_its_limits() -> None:
    from sensor.core.aggregate import HourAggregator, HourlyAggregation
    from sensor.fast import kernel

    bad = Limits(source_big_p=3)
    with pytest.raises(ValueError, match="source_big_p"):
        HourlyAggregation(3600, bad)
    with pytest.raises(ValueError, match="source_big_p"):
        HourAggregator(0, 3600, bad)
    if kernel.available():
        with pytest.raises(ValueError, match="source_big_p"):
            kernel.FastHourlyAggregation(1, 3600, bad)
        agg = kernel.FastHourlyAggregation(1, 3600)
        with pytest.raises(ValueError, match="source_big_p"):
            agg.limits = bad
