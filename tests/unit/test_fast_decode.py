"""The compiled decoder (sensor.fast._fast.decode) against the reference, on hostile bytes.

Every frame, valid, mutated, truncated or random, must decode to the same record (or the
same malformed reason) on both paths, and the C decoder must never read out of bounds:
a crash here is a segfault of the whole sensor.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.core.decode import decode_frame
from sensor.core.records import Malformed, PacketRecord
from sensor.fast import kernel as fastpath

pytestmark = pytest.mark.skipif(not fastpath.available(), reason="sensor.fast._fast is not built")

LINKTYPES = (0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 147)


def reference(linktype: int, frame: bytes, wire_len: int) -> object:
    rec = decode_frame(0, linktype, frame, wire_len)
    if isinstance(rec, Malformed):
        return rec.reason
    assert isinstance(rec, PacketRecord)
    return (
        rec.version, rec.src, rec.dst, rec.proto, rec.ttl, rec.ip_len, rec.ip_id,
        rec.later_fragment, rec.sport, rec.dport, rec.tcp_flags, rec.tcp_seq, rec.icmp_type,
        rec.icmp_code,
    )


def fast(linktype: int, frame: bytes, wire_len: int) -> object:
    from sensor.fast import _fast

    return _fast.decode(linktype, frame, wire_len)


def seeds() -> list[bytes]:
    """Well-formed L3 packets of every kind the decoder walks."""
    v4 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 54321, 0, 64, 6, 0, bytes(4),
                     bytes((198, 51, 100, 1)))
    tcp = struct.pack("!HHIIBBHHH", 1234, 23, 0xC6336401, 0, 0x50, 0x02, 1024, 0, 0)
    udp = struct.pack("!HHHH", 5, 53, 8, 0)
    icmp_err = bytes((3, 3, 0, 0, 0, 0, 0, 0)) + v4[:20] + udp
    v6 = lambda nh, pl: struct.pack("!IHBB16s16s", 6 << 28, len(pl), nh, 64,  # noqa: E731
                                    bytes(16), bytes.fromhex("20010db8dead" + "00" * 10)) + pl
    hbh = bytes((44, 0)) + bytes(6)
    frag = struct.pack("!BBHI", 6, 0, 0, 99)
    later = struct.pack("!BBHI", 17, 0, 8 << 3, 99)
    return [
        v4 + tcp,
        v4[:9] + b"\x11" + v4[10:] + udp,
        v4[:9] + b"\x01" + v4[10:] + icmp_err,
        v4[:6] + b"\x00\x10" + v4[8:],
        v6(6, tcp), v6(17, udp), v6(58, bytes((1, 0, 0, 0)) + bytes(4)),
        v6(0, hbh + frag + tcp), v6(44, later + bytes(16)), v6(60, bytes((43, 0)) + bytes(6)),
        v6(0, bytes((0, 0)) + bytes(6)) * 1,
    ]


def link(linktype: int, l3: bytes, rng: random.Random) -> bytes:
    et = b"\x86\xdd" if l3[:1] and l3[0] >> 4 == 6 else b"\x08\x00"
    if linktype == 1:
        tags = rng.choice((b"", b"\x81\x00\x00\x0a", b"\x88\xa8\x01\x2c\x81\x00\x00\x0a",
                           b"\x81\x00\x00\x01" * 3))
        return bytes(12) + tags + et + l3
    if linktype == 113:
        return bytes(14) + et + l3
    if linktype == 276:
        return et + bytes(18) + l3
    if linktype in (0, 108):
        fam = rng.choice((2, 10, 24, 28, 30, 7))
        return (struct.pack("<I", fam) if rng.random() < 0.5 else struct.pack(">I", fam)) + l3
    return l3


def mutate(frame: bytes, rng: random.Random) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randrange(4)):
        if b and rng.random() < 0.7:
            b[rng.randrange(len(b))] = rng.randrange(256)
    if rng.random() < 0.5:
        b = b[: rng.randrange(len(b) + 1)]
    return bytes(b)


def test_fast_decoder_matches_reference_on_mutations() -> None:
    rng = random.Random(1234)
    base = seeds()
    for _ in range(60_000):
        lt = rng.choice(LINKTYPES)
        frame = mutate(link(lt, rng.choice(base), rng), rng)
        wire = len(frame) + rng.choice((0, 0, 10))
        assert fast(lt, frame, wire) == reference(lt, frame, wire), (lt, frame.hex(), wire)


def test_fast_decoder_matches_reference_on_random_bytes() -> None:
    rng = random.Random(99)
    for _ in range(30_000):
        lt = rng.choice(LINKTYPES)
        frame = rng.randbytes(rng.randrange(0, 120))
        assert fast(lt, frame, len(frame)) == reference(lt, frame, len(frame)), (lt, frame.hex())


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(LINKTYPES), st.integers(0, len(seeds())), st.binary(max_size=160),
       st.integers(0, 64), st.randoms(use_true_random=False))
def test_fast_decoder_hypothesis(lt: int, which: int, data: bytes, extra: int,
                                 rng: random.Random) -> None:
    """hypothesis: arbitrary bytes, or a valid frame with arbitrary bytes spliced in."""
    base = seeds()
    if which < len(base):
        frame = link(lt, base[which], rng)
        at = rng.randrange(len(frame) + 1)
        frame = frame[:at] + data[: rng.randrange(8)] + frame[at + rng.randrange(8):]
    else:
        frame = data
    assert fast(lt, frame, len(frame) + extra) == reference(lt, frame, len(frame) + extra)
