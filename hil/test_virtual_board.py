"""Acceptance suite, on every target (hil/targets): a real daemon, run as user teiten with
only CAP_NET_RAW, capturing from the board's capture port, sealing into its spool,
uplinking through a real Mosquitto into the real central database.  Buckets are short
(test-only: 2 s on the virtual board and the ssh stand-in).  The tests drive `hil.lab.Board`
only, so they do not know which board they run on.
"""

from __future__ import annotations

import ipaddress
import itertools
import signal
import struct
import time

import pytest

from hil.lab import SENSOR_V4, Board, StoredSummary, add_truths, totals, wait_for

pytestmark = pytest.mark.privileged

DARK4 = ipaddress.ip_network("198.51.100.0/24")
DARK6 = ipaddress.ip_network("2001:db8:dead::/48")
# The sensor's kernel may announce its own management address (MLD reports, router
# solicitation); that is not an answer to dark traffic.
_IPV6_HOUSEKEEPING = {130, 131, 132, 133, 143}


def describe(frames: list[bytes]) -> list[tuple[str, str]]:
    """What the sensor sent to the scanner, one (kind, detail) per frame."""
    out = []
    for f in frames:
        (eth,) = struct.unpack_from("!H", f, 12)
        if eth == 0x0806:
            op = struct.unpack_from("!H", f, 20)[0]
            spa = str(ipaddress.IPv4Address(f[28:32]))
            out.append(("arp-reply" if op == 2 else "arp-request", spa))
        elif eth == 0x0800:
            proto = f[23]
            what = {1: "icmp", 6: "tcp", 17: "udp"}.get(proto, str(proto))
            out.append((f"ipv4-{what}", str(ipaddress.IPv4Address(f[26:30]))))
        elif eth == 0x86DD:
            nh = f[20]
            if nh == 58 and f[54] in _IPV6_HOUSEKEEPING:
                continue
            # MLD report (hop-by-hop, from the link-local or, before it is ready, from ::)
            if nh == 0 and (f[22:24] == b"\xfe\x80" or f[22:38] == bytes(16)):
                continue
            if nh == 58 and f[54] == 136:
                out.append(("na", str(ipaddress.IPv6Address(f[62:78]))))
            elif nh == 58 and f[54] == 135:
                out.append(("ns", str(ipaddress.IPv6Address(f[62:78]))))
            else:
                out.append((f"ipv6-{nh}", str(ipaddress.IPv6Address(f[22:38]))))
        else:
            out.append(("ether", hex(eth)))
    return out


def wait_counted(b: Board, key: str, n: int, timeout: float = 30) -> list[StoredSummary]:
    return list(wait_for(
        lambda: (lambda ss: ss if totals(ss)["ports"].get(key, 0) >= n else None)(
            b.summaries()),
        timeout, f"{n} packets of {key} in the central database", step=0.3))


def assert_counts(got: dict[str, object], want: dict[str, object]) -> None:
    for k in ("packets", "ports", "fingerprints", "malformed"):
        assert got[k] == want[k], f"{k}: central has {got[k]}, scanner sent {want[k]}"


def mix_then_empty_bucket(b: Board) -> tuple[dict[str, object], list[tuple[str, str]],
                                                    list[StoredSummary]]:
    with b.scanner_capture() as frames:
        truth = b.send("mix")
        sent = time.time()
        # at least one whole bucket after the traffic, closed by the timer
        ss = b.wait_sealed_after(sent + b.bucket_s, timeout=30)
    return truth, describe(frames), ss


def test_routed_exact_counts_silence_empty_bucket_and_sigterm(routed_board: Board) -> None:
    b = routed_board.start()
    t = b.target
    st = t.unit_state("sensor")
    assert st.uid == t.user_id("teiten")
    assert st.cap_eff == 1 << 13, f"CapEff {st.cap_eff:#x}: the daemon must hold CAP_NET_RAW only"
    # two users, as the units: neither process can read the other's private key
    want = t.user_id("teiten-uplink")  # once setpriv exec'd
    up = wait_for(lambda: (u := t.unit_state("uplink")).uid == want and u, 10,
                  "the uplink as teiten-uplink")
    assert up.cap_eff == 0
    for key, owner in ((t.paths.key, st.uid), (t.paths.tls_key, up.uid)):
        assert t.file_stat(key) == (owner, 0o600), key
    # the board's firewall, rendered from the config and loaded as the netsetup unit does
    rules = t.firewall_rules()
    assert "198.51.100.0/24" in rules and "2001:db8:dead::/48" in rules, rules
    truth, answers, ss = mix_then_empty_bucket(b)
    assert answers == [], f"the sensor answered: {answers}"
    assert_counts(totals(ss), truth)
    empties = [s for s in ss if s.summary.packets == 0 and not s.summary.health["partial"]]
    assert empties, "a timer-closed bucket with no traffic must reach central as a summary"
    e = empties[-1].summary
    assert e.health["capture_received"] == 0 and not e.sources and not e.ports
    for s in ss:  # every summary reports capture statistics and the clock's state
        assert {"capture_received", "capture_dropped", "capture_if_dropped",
                "clock_synchronized"} <= set(s.summary.health)
    assert sum(s.summary.health["capture_dropped"] for s in ss) == 0
    # SIGTERM closes the bucket in progress (partial) into the spool: nothing is lost
    more = b.send("syn", "--port", "7777", "--count", "25")
    before = t.unit_state("sensor")
    assert before.ready and before.watchdog >= 1, before
    assert b.stop_sensor(signal.SIGTERM) == 0
    # Under load the 25 packets may land in a bucket the timer closed just before the
    # stop; wait for the partial bucket the stop sealed as well, not only for the count.
    ss = list(wait_for(
        lambda: (lambda ss: ss if totals(ss)["ports"].get("tcp/7777", 0) >= 25
                 and ss[-1].summary.health["partial"] else None)(b.summaries()),
        30, "25 packets of tcp/7777 and the partial bucket sealed at SIGTERM", step=0.3))
    assert_counts(totals(ss), add_truths(truth, more))
    assert ss[-1].summary.health["partial"] is True
    assert t.units or "sealed bucket" in b.sensor_log()  # the units log without -v
    after = t.unit_state("sensor")
    assert not after.active
    assert t.units or (after.stopping and after.watchdog >= 3), after


def test_dedicated_exact_counts_and_silence(dedicated_board: Board) -> None:
    b = dedicated_board
    doc = b.target.doctor()
    assert doc["ok"], doc
    b.start()
    truth, answers, ss = mix_then_empty_bucket(b)
    assert answers == [], f"the sensor answered: {answers}"
    assert_counts(totals(ss), truth)
    assert all(s.summary.health["topology"] == "dedicated" for s in ss)


def test_onlink_answers_only_arp_and_ndp_for_the_block(onlink_board: Board) -> None:
    b = onlink_board.start(uplink_thread=True)  # `teiten run --uplink`: one process
    with b.scanner_capture() as frames:
        truth = b.send("mix")
        # a neighbour on the segment that is not dark: nobody may answer for it
        b.lab.scan("python3", "-c",
               "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
               f"for _ in range(3): s.sendto(b'x', ({SENSOR_V4!r}, 9))")
        sent = time.time()
        # ARP retries after rate limiting take up to a few seconds
        ss = b.wait_sealed_after(sent + 3 * b.bucket_s, timeout=40)
    answers = describe(frames)
    kinds = {k for k, _ in answers}
    assert kinds <= {"arp-reply", "na"}, f"unexpected frames from the sensor: {answers}"
    assert "arp-reply" in kinds and "na" in kinds
    for kind, addr in answers:
        net = DARK4 if kind == "arp-reply" else DARK6
        assert ipaddress.ip_address(addr) in net, f"{kind} for {addr}, not a dark address"
    assert ("arp-reply", SENSOR_V4) not in answers
    assert_counts(totals(ss), truth)
    replies = sum(s.summary.health.get("responder_arp_replies", 0)
                  + s.summary.health.get("responder_na_replies", 0) for s in ss)
    assert replies == len(answers)


def test_link_pull_and_broker_kill_lose_nothing_captured(routed_board: Board) -> None:
    b = routed_board.start()
    first = b.send("syn", "--port", "1001", "--count", "40")
    wait_counted(b, "tcp/1001", 40)
    pulled = time.time()
    b.target.set_link(False)
    time.sleep(1.5)
    b.target.set_link(True)
    wait_for(lambda: "capture gap ends" in b.sensor_log(), 10, "the gap to end")
    second = b.send("syn", "--port", "1002", "--count", "40", "--v6")
    b.kill_broker()
    during = b.send("syn", "--port", "1003", "--count", "40")
    time.sleep(3 * b.bucket_s)  # buckets sealed into the spool while central is away
    assert b.spool_count() >= 2
    b.start_broker()
    ss = wait_counted(b, "tcp/1003", 40, timeout=40)
    got = totals(ss)
    want = add_truths(first, second, during)
    assert_counts(got, want)
    gaps = [g for s in ss for g in s.summary.health.get("capture_gaps", [])]
    assert gaps, "the link pull must be reported as a capture gap"
    assert any(g[2].startswith("link") for g in gaps)
    # a summary closed during the gap reports it as ongoing (end 0); a later one has its end
    ended = [g for g in gaps if g[1]]
    assert ended, gaps
    start, end = ended[0][0], ended[0][1]
    assert pulled * 1e6 - 1e6 < start < end and 0.5e6 < end - start < 10e6
    assert any(s.summary.health.get("capture_gap_us", 0) > 0 for s in ss)


def test_sigkill_loses_at_most_the_bucket_in_progress(routed_board: Board) -> None:
    b = routed_board.start()
    sealed = b.send("syn", "--port", "2001", "--count", "30")
    wait_counted(b, "tcp/2001", 30)
    b.send("syn", "--port", "2002", "--count", "30")
    b.stop_sensor(signal.SIGKILL)
    killed = time.time()
    b.start_sensor()
    after = b.send("syn", "--port", "2003", "--count", "30")
    ss = wait_counted(b, "tcp/2003", 30)
    got = totals(ss)
    assert got["ports"]["tcp/2001"] == sealed["ports"]["tcp/2001"]
    assert got["ports"]["tcp/2003"] == after["ports"]["tcp/2003"]
    lost = 30 - got["ports"].get("tcp/2002", 0)
    assert 0 <= lost <= 30
    # buckets are contiguous apart from the one in progress at the kill (and the restart's)
    starts = sorted({s.hour_start for s in ss})
    holes = [(a, c) for a, c in itertools.pairwise(starts) if c - a > b.bucket_s]
    assert all(a <= killed <= c + b.bucket_s for a, c in holes), holes
    restarted = [s for s in ss if s.hour_start * 1e6 >= killed * 1e6 - b.bucket_s * 1e6]
    assert restarted[0].summary.health["partial"] is True


def test_clock_step_is_reported_and_no_packet_misfiled(stepping_board: Board) -> None:
    b = stepping_board.start()
    before = b.send("syn", "--port", "3001", "--count", "20")
    wait_counted(b, "tcp/3001", 20)
    step_at = time.time()
    b.set_clock_offset(120)  # NTP steps the clock forward by two minutes
    time.sleep(2 * b.bucket_s)
    ahead = b.send("syn", "--port", "3002", "--count", "20")
    ss = wait_counted(b, "tcp/3002", 20)
    steps = [st for s in ss for st in s.summary.health.get("clock_steps", [])]
    assert steps and 119e6 < steps[0][1] < 121e6, steps
    for s in ss:
        ports = {f"{r.proto}/{r.port}" for r in s.summary.ports}
        if "6/3001" in ports:
            assert s.hour_start < step_at
        if "6/3002" in ports:
            assert s.hour_start >= step_at + 119  # filed by the stepped clock, not before
    # and back a little (fake-hwclock, a second NTP step): sealed buckets stay sealed,
    # packets for them are counted late in the next summary, which closes once the clock
    # has caught up with the newest sealed bucket again
    b.set_clock_offset(114)
    time.sleep(0.5)
    late = b.send("syn", "--port", "3003", "--count", "20")
    ss = wait_for(lambda: (lambda x: x if totals(x)["late"] >= 20 else None)(b.summaries()),
                  30, "the late packets to be reported", step=0.3)
    got = totals(ss)
    assert got["late"] == late["packets"]
    assert "tcp/3003" not in got["ports"], "a packet for a sealed bucket was filed"
    assert any(-7e6 < st[1] < -5e6 for s in ss for st in s.summary.health.get("clock_steps", []))
    assert got["ports"]["tcp/3001"] == before["packets"]
    assert got["ports"]["tcp/3002"] == ahead["packets"]


def test_capture_drops_are_reported(routed_board: Board) -> None:
    b = routed_board
    b.write_config(buffer_bytes="65536")  # a tiny ring: 64 KiB
    b.start()
    b.signal_sensor(signal.SIGSTOP)  # a stalled reader: the kernel has to drop
    try:
        sent = b.send("syn", "--port", "4001", "--count", "3000")
    finally:
        b.signal_sensor(signal.SIGCONT)
    resumed = time.time()
    ss = b.wait_sealed_after(resumed + b.bucket_s)
    got = totals(ss)
    dropped = sum(s.summary.health["capture_dropped"] for s in ss)
    assert dropped > 0, "a stalled reader with a 64 KiB ring must drop"
    assert got["ports"].get("tcp/4001", 0) + got["late"] + dropped == sent["packets"]


def test_sighup_reloads_the_capture_filter(dedicated_board: Board) -> None:
    b = dedicated_board.start()
    t = b.target
    slow = 3 * b.bucket_s  # under emulation a reload takes seconds of Python
    held = wait_for(t.capture_sockets, 10 + slow, "the sensor's capture socket")
    b.write_config(exclude='["198.51.100.0/28"]')  # .0-.15 are now in use: not dark
    b.signal_sensor(signal.SIGHUP)
    # reopened: the capture's packet socket is a new one (the units do not log a reload
    # that worked: they log at WARNING; the virtual board logs it with -v)
    wait_for(lambda: (now := t.capture_sockets()) and not now & held, 10 + slow,
             "the capture reopened after SIGHUP")
    assert t.units or "config reloaded (capture reopened)" in b.sensor_log()
    time.sleep(0.5)
    b.send("syn", "--port", "5001", "--count", "30")  # to .1 .. .30
    ss = wait_counted(b, "tcp/5001", 15, timeout=60 + 2 * b.bucket_s)
    time.sleep(b.bucket_s + 1)
    got = totals(b.summaries())
    assert got["ports"]["tcp/5001"] == 15, got  # .16 .. .30 only
    assert any(s.summary.health.get("config_reloads") for s in ss)
    b.write_config(exclude='["192.0.2.0/28"]')  # invalid: outside the darknet
    b.signal_sensor(signal.SIGHUP)
    wait_for(lambda: "reload refused" in b.sensor_log(), 10 + slow, "the refusal")
    assert t.unit_state("sensor").active
