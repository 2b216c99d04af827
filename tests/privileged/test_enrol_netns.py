"""Zero-touch enrolment of a board in its own network namespace (the virtual board's layout).

Central (broker with the enrolment listener, `teiten central receive`, `teiten central
enrold`) runs in one namespace, the board in another, joined only by a veth link; the board
runs the commands its boot runs (`teiten firstboot`, `teiten enrol`, `teiten uplink`) as
processes in its namespace, against a real FAT card.  It enrols with its token and then
publishes; a second board with the same token is refused with a reason and gets no
certificate, so `teiten uplink` refuses to start on it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from central.ca import ensure_enrol_client, init_ca, write_server_chain
from central.config import acl_text, enrol_acl_text, render_mosquitto_conf
from central.store import Store
from sensor.edges.keys import load_private_key
from sensor.edges.spool import Spool
from wire.envelope import seal

pytestmark = pytest.mark.privileged
REPO = Path(__file__).resolve().parents[2]
CENTRAL_IP, BOARD_IP = "10.77.0.1", "10.77.0.2"
PORTS = {"tls": 8883, "ws": 8443, "enrol": 8884}
MTOOLS = dict(os.environ, MTOOLS_SKIP_CHECK="1")
HOUR0 = 1_800_000_000 // 3600 * 3600


def _in(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _listening(ns: str, port: int) -> bool:
    code = (f"import socket\ntry:\n socket.create_connection(('127.0.0.1', {port}), 0.3)\n"
            "except OSError:\n raise SystemExit(1)")
    return subprocess.run(_in(ns, sys.executable, "-c", code), check=False,
                          capture_output=True).returncode == 0


def _card(root: Path, sensor_id: str, enrol: str) -> Path:
    image = root / "card.img"
    subprocess.run(["mkfs.vfat", "-C", "-n", "TEITEN", str(image), "8192"], check=True,
                   capture_output=True)
    toml = root / "teiten.toml"
    toml.write_text(f"""[sensor]
id = "{sensor_id}"
topology = "dedicated"
key = "{root}/data/sensor.key"
[capture]
interface = "eth1"
darknet = ["198.51.100.0/24"]
[spool]
path = "{root}/data/spool"
[uplink]
host = "{CENTRAL_IP}"
port = {PORTS["tls"]}
ws_port = {PORTS["ws"]}
ca = "{root}/etc/ca.crt"
cert = "{root}/etc/sensor.crt"
key = "{root}/etc/tls.key"
ack_timeout_s = 3.0
backoff_min_s = 0.2
backoff_max_s = 1.0
[board]
interface = "eth0"
address = "dhcp"
{enrol}""")
    subprocess.run(["mcopy", "-o", "-i", str(image), str(toml), "::teiten.toml"], check=True,
                   env=MTOOLS)
    return image


def _teiten(ns: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_in(ns, sys.executable, "-m", "sensor.cli", *argv), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_board_in_its_own_namespace_enrols_then_publishes(netns_pair, tmp_path: Path  # type: ignore[no-untyped-def]
                                                            ) -> None:
    for tool in ("mkfs.vfat", "mcopy", "mosquitto"):
        assert subprocess.run(["which", tool], capture_output=True).returncode == 0, tool
    central_ns, board_ns = netns_pair.ns_a, netns_pair.ns_b
    netns_pair.add_addr("a", f"{CENTRAL_IP}/30")
    netns_pair.add_addr("b", f"{BOARD_IP}/30")
    # central: CA whose server certificate names the central address
    files = init_ca(tmp_path / "ca", hosts=[CENTRAL_IP, "127.0.0.1"])
    ensure_enrol_client(files.dir)
    bdir = tmp_path / "broker"
    (bdir / "data").mkdir(parents=True)
    (bdir / "acl").write_text(acl_text())
    (bdir / "enrol.acl").write_text(enrol_acl_text())
    (bdir / "enrol.passwd").write_text("")
    (bdir / "mosquitto.conf").write_text(render_mosquitto_conf(
        data_dir=bdir / "data", acl_file=bdir / "acl", cafile=files.ca_crt,
        certfile=files.server_crt, keyfile=files.server_key, tls_port=PORTS["tls"],
        ws_port=PORTS["ws"], extra="user root", enrol_port=PORTS["enrol"],
        enrol_certfile=write_server_chain(files.dir), password_file=bdir / "enrol.passwd",
        enrol_acl_file=bdir / "enrol.acl"))
    cdir = tmp_path / "central"
    cdir.mkdir()
    (cdir / "sensors.toml").write_text("[sensors]\n")
    conf = cdir / "central.toml"
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, *cmd: str) -> None:
        with (tmp_path / f"{name}.log").open("ab") as log:
            procs.append(subprocess.Popen(_in(central_ns, *cmd), stdout=log,
                                          stderr=subprocess.STDOUT, cwd=REPO,
                                          env={**os.environ, "PYTHONPATH": str(REPO)}))

    try:
        spawn("broker", "mosquitto", "-c", str(bdir / "mosquitto.conf"))
        _wait(lambda: _listening(central_ns, PORTS["enrol"]), 15, "the broker")
        (bdir / "mosquitto.pid").write_text(f"{procs[0].pid}\n")
        conf.write_text(
            f'[receiver]\nhost = "127.0.0.1"\nport = {PORTS["tls"]}\nca = "{files.ca_crt}"\n'
            f'cert = "{files.receiver_crt}"\nkey = "{files.receiver_key}"\n'
            f'database = "{cdir / "central.db"}"\nsensors = "{cdir / "sensors.toml"}"\n'
            f'keepalive_s = 5\n[enrolment]\nca_dir = "{files.dir}"\n'
            f'password_file = "{bdir / "enrol.passwd"}"\n'
            f'broker_pid_file = "{bdir / "mosquitto.pid"}"\npublic_host = "{CENTRAL_IP}"\n')
        spawn("receiver", sys.executable, "-m", "sensor.cli", "central", "receive", "-v",
              "--config", str(conf))
        spawn("enrold", sys.executable, "-m", "sensor.cli", "central", "enrold", "-v",
              "--config", str(conf))
        _wait(lambda: "enrolment service connected" in (tmp_path / "enrold.log").read_text(),
              20, "the enrolment service")
        _wait(lambda: "connected (session" in (tmp_path / "receiver.log").read_text(), 20,
              "the receiver")
        r = _teiten(central_ns, "central", "enroll", "vb-01", "--config", str(conf), "--json")
        assert r.returncode == 0, r.stderr
        tok = json.loads(r.stdout)

        # the board: first boot, enrolment, then its uplink, all inside its namespace
        board = tmp_path / "board"
        board.mkdir()
        image = _card(board, "vb-01", tok["teiten_toml"])
        fb = _teiten(board_ns, "firstboot", "--card", str(image), "--etc", str(board / "etc"),
                     "--run", str(board / "run"), "--ssh-dir", str(board / "ssh"), "--no-chown",
                     "--json")
        assert json.loads(fb.stdout)["network"] is True, fb.stdout + fb.stderr
        en = _teiten(board_ns, "enrol", "--card", str(image), "--etc", str(board / "etc"),
                     "--no-chown", "--json")
        assert en.returncode == 0 and json.loads(en.stdout)["action"] == "enrolled", \
            en.stdout + en.stderr + (tmp_path / "enrold.log").read_text()[-2000:]
        key = load_private_key(board / "data" / "sensor.key")
        spool = Spool(board / "data" / "spool")
        for i in range(3):
            h, seq = HOUR0 + 3600 * i, (0x51 << 32) | i
            spool.write(seal(_summary("vb-01", h), sensor_id="vb-01", sequence=seq,
                             hour_start=h, created_us=(h + 3600) * 1_000_000, key=key), h, seq)
        with (tmp_path / "uplink.log").open("ab") as log:
            up = subprocess.Popen(_in(board_ns, sys.executable, "-m", "sensor.cli", "uplink",
                                      "--config", str(board / "etc" / "sensor.toml")),
                                  stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        procs.append(up)
        _wait(lambda: not spool.entries(), 60, "the board's summaries to be acknowledged")
        with Store(cdir / "central.db") as st:
            assert [s.sequence & 0xFFFFFFFF for s in st.summaries("vb-01")] == [0, 1, 2]

        # a second board with the same token: refused with a reason, no certificate
        other = tmp_path / "other"
        other.mkdir()
        image2 = _card(other, "vb-01", tok["teiten_toml"])
        _teiten(board_ns, "firstboot", "--card", str(image2), "--etc", str(other / "etc"),
                "--run", str(other / "run"), "--ssh-dir", str(other / "ssh"), "--no-chown")
        en2 = _teiten(board_ns, "enrol", "--card", str(image2), "--etc", str(other / "etc"),
                      "--no-chown", "--json")
        assert en2.returncode == 1 and json.loads(en2.stdout)["reason"] == "token_used"
        assert not (other / "etc" / "sensor.crt").exists()
        up2 = _teiten(board_ns, "uplink", "--config", str(other / "etc" / "sensor.toml"),
                      timeout=30)
        assert up2.returncode == 2 and "no such file" in up2.stderr  # it does not start
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def _summary(sensor_id: str, hour: int) -> bytes:
    from wire.summary import Summary, encode_summary

    return encode_summary(Summary(sensor_id, hour, 3600, (), 0, 0, 0, 0, False, 0, 0, (), (),
                                  (), (), (), (), (), {}, {}, {}))
