"""First boot against a real FAT image (mkfs.vfat + mtools), as the board's card is read.

Five cases: a valid config, an invalid one, keys already present, a later bad edit (the
last good config keeps running) and a later good edit (accepted).  The card is never
mounted: `teiten firstboot --card IMAGE` reads and writes it with mcopy, as on the board.
Marked privileged because the image tools are system packages the suite installs as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sensor.edges.firstboot import (
    CARD_CONFIG,
    CARD_ERROR,
    CARD_FINGERPRINT,
    BoardPaths,
    MtoolsCard,
    Outcome,
    check_card_config,
    decide,
    run_firstboot,
    strip_board_table,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.privileged

MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


@dataclass
class Board:
    image: Path
    root: Path

    @property
    def paths(self) -> BoardPaths:
        return BoardPaths(etc=self.root / "etc", run=self.root / "run",
                          ssh_dir=self.root / "ssh", chown=False)

    def put(self, name: str, text: str) -> None:
        src = self.root.parent / f"upload-{name}"
        src.write_text(text)
        subprocess.run(["mcopy", "-o", "-i", str(self.image), str(src), f"::{name}"],
                       check=True, env=MTOOLS_ENV)

    def get(self, name: str) -> str | None:
        r = subprocess.run(["mtype", "-i", str(self.image), f"::{name}"],
                           capture_output=True, text=True, env=MTOOLS_ENV, check=False)
        return r.stdout if r.returncode == 0 else None

    def names(self) -> list[str]:
        r = subprocess.run(["mdir", "-b", "-i", str(self.image), "::"], capture_output=True,
                           text=True, env=MTOOLS_ENV, check=True)
        return sorted(line.removeprefix("::/") for line in r.stdout.split())

    def firstboot(self) -> tuple[int, dict[str, object]]:
        """`teiten firstboot` as the unit runs it, on the FAT image."""
        r = subprocess.run(
            [sys.executable, "-m", "sensor.cli", "firstboot", "--card", str(self.image),
             "--etc", str(self.paths.etc), "--run", str(self.paths.run),
             "--ssh-dir", str(self.paths.ssh_dir), "--no-chown", "--json"],
            capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
        )
        assert r.returncode in (0, 1), r.stderr
        result: dict[str, object] = json.loads(r.stdout)
        return r.returncode, result


def config(root: Path, *, darknet: str = '"198.51.100.0/24"', extra: str = "") -> str:
    return f"""# teiten.toml on the card
[sensor]
id = "tyo-01"
topology = "dedicated"
key = "{root}/data/sensor.key"

[capture]
interface = "eth1"
darknet = [{darknet}]

[spool]
path = "{root}/data/spool"

[uplink]
host = "central.example.org"
ca = "{root}/etc/ca.crt"
cert = "{root}/etc/sensor.crt"
key = "{root}/etc/tls.key"

[board]
interface = "eth0"
address = "dhcp"
{extra}"""


@pytest.fixture
def board(tmp_path: Path) -> Board:
    for tool in ("mkfs.vfat", "mcopy", "mtype"):
        assert shutil.which(tool), f"{tool} missing: apt-get install dosfstools mtools"
    image = tmp_path / "teiten-fat.img"
    subprocess.run(["mkfs.vfat", "-C", "-n", "TEITEN", str(image), "8192"], check=True,
                   capture_output=True)
    root = tmp_path / "board"
    root.mkdir()
    return Board(image, root)


def test_valid_config_makes_keys_and_writes_the_fingerprint(board: Board) -> None:
    board.put(CARD_CONFIG, config(board.root))
    rc, out = board.firstboot()
    assert rc == 0 and out["outcome"] == "first" and out["network"] is True
    ident = out["identity"]
    assert isinstance(ident, dict)
    fp = board.get(CARD_FINGERPRINT)
    assert fp is not None and ident["fingerprint"] in fp
    assert "BEGIN CERTIFICATE REQUEST" in fp and ident["public_key"] in fp
    assert CARD_ERROR not in [n.lower() for n in board.names()]
    key = board.root / "data" / "sensor.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert ((board.root / "etc" / "tls.key").stat().st_mode & 0o777) == 0o600
    sensor_toml = (board.root / "etc" / "sensor.toml").read_text()
    assert "[board]" not in sensor_toml and "[capture]" in sensor_toml
    # the sensor part is what `teiten config check --no-files` accepts
    r = subprocess.run([sys.executable, "-m", "sensor.cli", "config", "check", "--no-files",
                        str(board.root / "etc" / "sensor.toml")], cwd=REPO,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    net = (board.root / "run" / "systemd" / "network" / "10-teiten-management.network")
    assert "Name=eth0" in net.read_text() and "DHCP=ipv4" in net.read_text()


def test_invalid_config_writes_the_error_file_and_stays_silent(board: Board) -> None:
    board.put(CARD_CONFIG, config(board.root, darknet='"198.51.100.7/24"',
                                  extra="ssh = true\n"))
    rc, out = board.firstboot()
    assert rc == 1 and out["outcome"] == "silent" and out["network"] is False
    err = board.get(CARD_ERROR)
    assert err is not None
    assert "capture.darknet[0]" in err and "198.51.100.0/24" in err  # the field and the fix
    assert "board.ssh" in err
    assert "captures nothing and sends nothing" in err
    assert board.get(CARD_FINGERPRINT) is None
    assert not (board.root / "data" / "sensor.key").exists()  # no keys for a bad config
    assert not (board.root / "etc" / "sensor.toml").exists()
    assert not (board.root / "run" / "systemd").exists()  # no network configured


def test_keys_already_present_are_never_overwritten(board: Board) -> None:
    board.put(CARD_CONFIG, config(board.root))
    rc, first = board.firstboot()
    assert rc == 0
    key = board.root / "data" / "sensor.key"
    tls = board.root / "etc" / "tls.key"
    before = key.read_bytes(), tls.read_bytes()
    (board.root / "etc" / "teiten.toml").unlink()  # even with the config forgotten
    rc, again = board.firstboot()
    assert rc == 0 and again["outcome"] == "first"
    assert (key.read_bytes(), tls.read_bytes()) == before
    assert isinstance(again["identity"], dict) and isinstance(first["identity"], dict)
    assert again["identity"]["fingerprint"] == first["identity"]["fingerprint"]
    assert again["identity"]["created"] == []
    fp = board.get(CARD_FINGERPRINT)
    assert fp is not None and first["identity"]["fingerprint"] in fp


def test_later_bad_edit_keeps_the_last_good_config(board: Board) -> None:
    board.put(CARD_CONFIG, config(board.root))
    assert board.firstboot()[0] == 0
    good = (board.root / "etc" / "sensor.toml").read_text()
    board.put(CARD_CONFIG, config(board.root, extra="adress = \"192.0.2.2/30\"\n"))
    rc, out = board.firstboot()
    assert rc == 0 and out["outcome"] == "kept" and out["network"] is True
    err = board.get(CARD_ERROR)
    assert err is not None and "board.adress" in err and "unknown field" in err
    assert "keeps running its last good configuration" in err
    assert (board.root / "etc" / "sensor.toml").read_text() == good
    assert "adress" not in (board.root / "etc" / "teiten.toml").read_text()


def test_later_good_edit_is_accepted_and_clears_the_error(board: Board) -> None:
    board.put(CARD_CONFIG, config(board.root))
    assert board.firstboot()[0] == 0
    board.put(CARD_CONFIG, config(board.root, darknet='"198.51.100.0/24", "203.0.113.0/24"',
                                  extra="bogus = 1\n"))
    assert board.firstboot()[0] == 0 and board.get(CARD_ERROR) is not None
    board.put(CARD_CONFIG, config(board.root, darknet='"198.51.100.0/24", "203.0.113.0/24"'))
    rc, out = board.firstboot()
    assert rc == 0 and out["outcome"] == "updated"
    assert board.get(CARD_ERROR) is None
    assert "203.0.113.0/24" in (board.root / "etc" / "sensor.toml").read_text()
    rc, out = board.firstboot()
    assert rc == 0 and out["outcome"] == "unchanged"


def test_decisions_are_pure(tmp_path: Path) -> None:
    good = check_card_config(config(tmp_path))
    bad = check_card_config(config(tmp_path, extra="ssh = 1\n"))
    assert good.ok and not bad.ok
    assert decide(good, None).outcome is Outcome.FIRST
    assert decide(good, good).outcome is Outcome.UNCHANGED
    assert decide(bad, good).outcome is Outcome.KEPT and decide(bad, good).run is good
    assert decide(bad, None).outcome is Outcome.SILENT and not decide(bad, None).network
    assert decide(None, good).run is good and decide(None, None).error is not None
    assert "[board]" not in strip_board_table(config(tmp_path))


def test_run_firstboot_in_process(board: Board) -> None:
    board.put(CARD_CONFIG, config(board.root))
    report = run_firstboot(MtoolsCard(str(board.image)), board.paths)
    assert report.decision.outcome is Outcome.FIRST and report.identity is not None
