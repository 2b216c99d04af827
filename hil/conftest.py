"""The HIL suite's options, fixtures and results (root: namespaces, setpriv, a real broker).

One option chooses the board, and may be given more than once (each test runs on each):

    --target netns                      the virtual board (namespaces on this host)
    --target standin                    the ssh target against sshd in a namespace (CI)
    --target ssh://root@PI --capture-port IFACE --central-host ADDR [--power-cycle-cmd CMD]
    --target qemu:build/image/teiten-...img.xz

Without --target the suite runs on netns and standin (what `make test` runs).  Durations
and repetitions are options (--power-cuts, --ramp-rates, --ramp-step-s); short by default.

Every run writes junit.xml and report.md into --hil-results (default
build/hil-results/<UTC time>): target, software, what passed, the highest lossless packet
rate with the sensor's CPU time per packet, and the power cuts survived.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.lab import Board
from hil.targets import make_target, short_name
from hil.targets.base import REPO

DEFAULT_TARGETS = ["netns", "standin"]
# Without --target (make test), every test runs on netns and these on the ssh stand-in too:
# between them they drive every method of the ssh target (deploy, start, stop, kill,
# power cut and boot, read spool, logs and unit state) and keep CI's time modest.
# `--target standin` runs the whole suite on it.
CI_STANDIN = {"test_routed_exact_counts_silence_empty_bucket_and_sigterm",
              "test_sigkill_loses_at_most_the_bucket_in_progress",
              "test_power_cuts_keep_every_sealed_summary",
              "test_exact_counts_ipv4_ipv6_vlan_and_three_scanner_families"}
_RESULTS: dict[str, Any] = {"metrics": {}, "outcomes": [], "software": {}, "hooks": {}}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("hil", "hardware-in-the-loop (hil/)")
    g.addoption("--target", action="append", default=[],
                help="netns | standin | ssh://USER@HOST | qemu:IMAGE (repeatable; default "
                     "netns and standin)")
    g.addoption("--capture-port", default="", help="ssh: the test host's interface cabled "
                "to the Pi's capture port (moved into the scanner namespace for the run)")
    g.addoption("--board-interface", default="eth1", help="ssh: the Pi's capture interface")
    g.addoption("--board-mgmt-interface", default="eth0", help="ssh: the Pi's management "
                "interface (process mode opens SSH from --central-host on it)")
    g.addoption("--central-host", default="", help="ssh: the test host's address as the Pi "
                "sees it (the broker listens there)")
    g.addoption("--broker-port", default="8883", help="ssh: the broker's port on the test host")
    g.addoption("--power-cycle-cmd", default="", help="ssh: a shell command that switches "
                "the Pi off and on again (relay, switched PDU; $TEITEN_HIL_HOST is the Pi)")
    g.addoption("--ssh-key", default="", help="ssh: identity file")
    g.addoption("--ssh-python", default="python3", help="ssh: the Pi's interpreter (process "
                "mode), with Teiten's dependencies installed")
    g.addoption("--ssh-dir", default="/var/tmp/thil-board", help="ssh: the harness's "
                "directory on the Pi (process mode)")
    g.addoption("--ssh-units", action="store_true", help="ssh: the Pi runs the SD image; "
                "systemd runs the units")
    g.addoption("--power-cuts", type=int, default=3, help="power cuts in the power-cut test "
                "(bench: 200)")
    g.addoption("--ramp-rates", default="", help="packet rates of the ramp, comma-separated "
                "(default: the target's)")
    g.addoption("--ramp-step-s", type=float, default=0.0, help="seconds per ramp step "
                "(default: the target's)")
    g.addoption("--hil-results", default="", help="results folder (junit.xml, report.md)")


def _results_dir(config: pytest.Config) -> Path:
    d = config.getoption("--hil-results") or os.environ.get("TEITEN_HIL_RESULTS", "")
    if not d:
        d = str(REPO / "build" / "hil-results" / time.strftime("%Y%m%dT%H%M%SZ",
                                                                time.gmtime()))
    return Path(d)


def _runs_hil(config: pytest.Config) -> bool:
    hil = REPO / "hil"
    args = [Path(a.split("::")[0]).resolve() for a in config.args] or [REPO]
    return any(a == hil or hil in a.parents or a in hil.parents for a in args)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    _RESULTS["start"] = time.time()
    _RESULTS["enabled"] = _runs_hil(config)
    if not _RESULTS["enabled"]:
        return
    from hil.targets.netns import git_commit

    # the checkout the run starts from: a long run outlives later commits in the same tree
    _RESULTS["commit"] = git_commit()
    d = _results_dir(config)
    _RESULTS["dir"] = d
    if not getattr(config.option, "xmlpath", None):
        d.mkdir(parents=True, exist_ok=True)
        config.option.xmlpath = str(d / "junit.xml")


def targets(config: pytest.Config) -> list[str]:
    return list(config.getoption("--target")) or DEFAULT_TARGETS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hil_target" in metafunc.fixturenames:
        specs = targets(metafunc.config)
        if not metafunc.config.getoption("--target") and metafunc.function.__name__ not in \
                CI_STANDIN:
            specs = ["netns"]
        metafunc.parametrize("hil_target", specs, ids=[short_name(s) for s in specs])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Time limits that follow the target and the repetitions (pyproject's 300 s is for a
    test on the virtual board)."""
    cuts = int(config.getoption("--power-cuts"))
    for item in items:
        spec = getattr(getattr(item, "callspec", None), "params", {}).get("hil_target")
        if spec is None:
            continue
        slow = spec.startswith(("qemu:", "ssh://"))
        limit = 1800.0 if slow else 300.0
        if "power_cuts" in item.name:
            limit += cuts * (300.0 if slow else 30.0)
        item.add_marker(pytest.mark.timeout(limit))
    # The power-cut test is by far the longest (a boot per cut): run it last, so that a
    # failure anywhere else shows within the first part of a long run.
    items.sort(key=lambda item: "power_cuts" in item.name)


def _opts(config: pytest.Config) -> dict[str, Any]:
    names = ("capture_port", "board_interface", "board_mgmt_interface", "central_host",
             "broker_port",
             "power_cycle_cmd", "ssh_key", "ssh_python", "ssh_dir", "ssh_units")
    return {n: config.getoption(n) for n in names}


@pytest.fixture
def make_board(request: pytest.FixtureRequest, hil_target: str) -> Iterator[Any]:
    """make_board(topology, clock_offset=False) -> a Board that is up; down at teardown."""
    if os.geteuid() != 0:
        pytest.fail("the HIL suite needs root; run `sudo make test`", pytrace=False)
    made: list[Board] = []

    def make(topology: str = "routed", *, clock_offset: bool = False) -> Board:
        target = make_target(hil_target, _opts(request.config))
        if topology == "routed" and topology not in target.topologies:
            topology = target.topologies[0]  # a test that only needs some topology
        if topology not in target.topologies:
            pytest.fail(f"{hil_target} cannot be wired as {topology}", pytrace=False)
        b = Board(target, topology, clock_offset=clock_offset).up()
        made.append(b)
        _RESULTS["software"][short_name(hil_target)] = target.describe()
        hook = getattr(target, "power_hook", lambda: "SIGKILL of every process")()
        _RESULTS["hooks"][short_name(hil_target)] = hook
        return b

    try:
        yield make
    finally:
        for b in made:
            b.down()


@pytest.fixture
def routed_board(make_board: Any) -> Board:
    return make_board("routed")  # type: ignore[no-any-return]


@pytest.fixture
def dedicated_board(make_board: Any) -> Board:
    return make_board("dedicated")  # type: ignore[no-any-return]


@pytest.fixture
def onlink_board(make_board: Any) -> Board:
    return make_board("onlink")  # type: ignore[no-any-return]


@pytest.fixture
def stepping_board(make_board: Any) -> Board:
    return make_board("routed", clock_offset=True)  # type: ignore[no-any-return]


@pytest.fixture
def hil_record(hil_target: str) -> Any:
    """hil_record(key, value): a number for the run's report (per target)."""
    def record(key: str, value: Any) -> None:
        _RESULTS["metrics"].setdefault(short_name(hil_target), {})[key] = value
    return record


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "/hil/" not in "/" + report.nodeid.replace("::", "/") and not report.nodeid.startswith(
            "hil/"):
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _RESULTS["outcomes"].append((report.nodeid, report.outcome, report.duration))


def _target_of(nodeid: str) -> str:
    if "[" in nodeid:
        return nodeid.rsplit("[", 1)[1].rstrip("]").split("-")[0]
    return "-"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _RESULTS.get("enabled") or not _RESULTS["outcomes"]:
        return
    d: Path = _RESULTS["dir"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "report.md").write_text(render_report(session.config))
    session.config.hil_report = d / "report.md"  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    path = getattr(terminalreporter.config, "hil_report", None)
    if path is not None:
        terminalreporter.write_line(f"HIL report: {path}")


def render_report(config: pytest.Config) -> str:
    outcomes: list[tuple[str, str, float]] = _RESULTS["outcomes"]
    by_target: dict[str, list[tuple[str, str, float]]] = {}
    for o in outcomes:
        by_target.setdefault(_target_of(o[0]), []).append(o)
    took = time.time() - _RESULTS["start"]
    lines = ["# Teiten HIL run", "",
             f"- when: {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(_RESULTS['start']))}"
             f", {took:.0f} s",
             f"- checkout: git {_RESULTS['commit']}",
             f"- targets: {', '.join(targets(config))}", "",
             "| target | software | passed | failed | lossless rate (pps) | CPU per packet "
             "| power cuts survived | power cut by |",
             "|---|---|---|---|---|---|---|---|"]
    for t, os_ in sorted(by_target.items()):
        m = _RESULTS["metrics"].get(t, {})
        passed = sum(1 for o in os_ if o[1] == "passed")
        failed = len(os_) - passed
        rate = m.get("lossless_pps")
        cpu = m.get("cpu_us_per_packet")
        lines.append(
            f"| {t} | {_RESULTS['software'].get(t, '?')} | {passed} | {failed} | "
            f"{rate if rate is not None else 'not measured'}"
            f"{' (ramp ceiling)' if m.get('ramp_ceiling') else ''} | "
            f"{f'{cpu:.1f} µs' if cpu is not None else '-'} | "
            f"{m.get('power_cuts_survived', '-')} of {m.get('power_cuts', '-')} | "
            f"{_RESULTS['hooks'].get(t, '-')} |")
    lines += ["", "## Tests", "", "| test | outcome | seconds |", "|---|---|---|"]
    lines += [f"| `{n}` | {o} | {s:.1f} |" for n, o, s in outcomes]
    ramps = {t: m["ramp"] for t, m in _RESULTS["metrics"].items() if "ramp" in m}
    for t, steps in ramps.items():
        lines += ["", f"## Rate ramp on {t}", "",
                  "| offered pps | achieved pps | sent | counted | dropped | CPU per packet |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {s['rate']} | {s['achieved']:.0f} | {s['sent']} | {s['counted']} | "
                  f"{s['dropped']} | {s['cpu_us_per_packet']:.1f} µs |" for s in steps]
    return "\n".join(lines) + "\n"
