"""Envelope v1: vectors, every single-bit flip, bombs, and fuzzing of verification."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.keyring import load_keyring
from wire import envelope as ev
from wire.summary import MAX_TIME_US, decode_summary, encode_summary

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "envelope-v1"


def _load_vectors_module() -> ModuleType:
    path = VECTORS.parent / "make_envelope_vectors.py"
    spec = importlib.util.spec_from_file_location("make_envelope_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_envelope_vectors", module)
    spec.loader.exec_module(module)
    return module


mv = _load_vectors_module()
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
KEYRING = load_keyring(VECTORS / "sensors.toml")
ENVELOPE = (VECTORS / "envelope.bin").read_bytes()
SENSOR_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def _seal(summary_bytes: bytes, **kw: object) -> bytes:
    fields: dict[str, object] = {
        "sensor_id": mv.SENSOR_ID,
        "sequence": mv.SEQUENCE,
        "hour_start": mv.HOUR,
        "created_us": mv.CREATED_US,
        "key": mv.vector_key(),
    }
    fields.update(kw)
    return ev.seal(summary_bytes, **fields)  # type: ignore[arg-type]


def _reason(data: bytes, **kw: int) -> str | None:
    try:
        ev.verify_envelope(data, KEYRING, **kw)
    except ev.EnvelopeError as exc:
        return exc.reason
    return None


# --- vectors -----------------------------------------------------------------------------


def test_vector_verifies_to_the_committed_summary() -> None:
    ok = MANIFEST["ok"]
    verified = ev.verify_envelope(ENVELOPE, KEYRING)
    env = verified.envelope
    fields = (env.version, env.sensor_id, env.sequence, env.hour_start, env.created_us, env.codec)
    assert fields == (
        1, ok["sensor_id"], ok["sequence"], ok["hour_start"], ok["created_us"], ok["codec"],
    )
    assert env.signature.hex() == ok["signature_hex"]
    assert env.payload == (VECTORS / ok["payload"]).read_bytes()
    assert verified.summary_bytes == (VECTORS / ok["summary"]).read_bytes()
    assert verified.summary == decode_summary(verified.summary_bytes)
    assert verified.summary.sensor_id == ok["sensor_id"]
    assert env.epoch == 0x1234ABCD and env.counter == 7


def test_vector_signed_bytes_and_signature_are_reproducible() -> None:
    env = ev.parse_envelope(ENVELOPE)
    signed = ev.signing_bytes(
        version=env.version, sensor_id=env.sensor_id, sequence=env.sequence,
        hour_start=env.hour_start, created_us=env.created_us, codec=env.codec,
        payload=env.payload,
    )
    assert signed == (VECTORS / "envelope.signed-bytes.bin").read_bytes()
    assert env.signed_bytes() == signed
    # Ed25519 is deterministic: re-signing the committed payload gives the committed bytes.
    again = ev.seal_payload(
        env.payload, sensor_id=env.sensor_id, sequence=env.sequence,
        hour_start=env.hour_start, created_us=env.created_us, key=mv.vector_key(),
    )
    assert again == ENVELOPE


def test_vector_layout_is_what_the_docs_say() -> None:
    # docs/wire-format.md walks through these exact bytes.
    assert ENVELOPE[0] == 0x98  # fixarray of 8
    assert ENVELOPE[1] == 0x01  # version
    assert ENVELOPE[2:12] == b"\xa9vector-01"
    assert ENVELOPE[12] == 0xCF and int.from_bytes(ENVELOPE[13:21], "big") == mv.SEQUENCE
    signed = (VECTORS / "envelope.signed-bytes.bin").read_bytes()
    assert signed[:16] == b"teiten-envelope\x00"
    assert signed[16:20] == b"\x00\x00\x00\x01"
    assert signed[20] == 9 and signed[21:30] == b"vector-01"


@pytest.mark.parametrize("name", sorted(MANIFEST["bad"]))
def test_bad_vectors_give_their_reason(name: str) -> None:
    assert _reason((VECTORS / name).read_bytes()) == MANIFEST["bad"][name]


# --- every single-bit flip ---------------------------------------------------------------


def _field_spans(data: bytes) -> list[tuple[str, int, int, int]]:
    """(field, start of its encoding, start of its value bytes, end) for each field."""
    env = ev.parse_envelope(data)
    values = [env.version, env.sensor_id, env.sequence, env.hour_start, env.created_us,
              env.codec, env.payload, env.signature]
    names = ["version", "sensor_id", "sequence", "hour_start", "created_us", "codec",
             "payload", "signature"]
    spans = []
    pos = 1  # after the array header
    for name, value in zip(names, values, strict=True):
        enc = msgpack.packb(value, use_bin_type=True)
        raw = bytes(value) if isinstance(value, bytes | memoryview) else (
            value.encode() if isinstance(value, str) else b""
        )
        head = len(enc) - len(raw) if raw else (1 if len(enc) > 1 else 0)
        spans.append((name, pos, pos + head, pos + len(enc)))
        pos += len(enc)
    assert pos == len(data)
    return spans


def _expected_reason(data: bytes, index: int, bit: int) -> str:
    if index == 0:
        return "malformed"
    for name, start, value_start, end in _field_spans(data):
        if not start <= index < end:
            continue
        if index < value_start:
            return "malformed"  # a type or length byte
        if name == "version":
            return "unknown_version" if (data[index] ^ (1 << bit)) < 0x80 else "malformed"
        if name == "sensor_id":
            raw = bytearray(data[value_start:end])
            raw[index - value_start] ^= 1 << bit
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                return "malformed"
            return "unknown_sensor" if SENSOR_ID_RE.fullmatch(text) else "malformed"
        if name in ("sequence", "hour_start", "created_us"):
            raw = bytearray(data[value_start:end])
            raw[index - value_start] ^= 1 << bit
            value = int.from_bytes(raw, "big")
            canonical = len(msgpack.packb(value)) == end - start
            if name == "created_us" and value > MAX_TIME_US:
                return "malformed"  # past the year 9999: refused before the signature
            return "bad_signature" if canonical else "malformed"
        if name == "codec":
            return "malformed"
        return "bad_signature"  # payload or signature bytes
    raise AssertionError(index)


def test_every_single_bit_flip_is_rejected_with_the_right_reason() -> None:
    assert len(ENVELOPE) > 1000
    wrong = []
    buf = bytearray(ENVELOPE)
    for index in range(len(buf)):
        for bit in range(8):
            buf[index] ^= 1 << bit
            got = _reason(bytes(buf))
            buf[index] ^= 1 << bit
            want = _expected_reason(ENVELOPE, index, bit)
            if got != want:
                wrong.append((index, bit, got, want))
    assert wrong == []


# --- seal / verify round trip and field checks -------------------------------------------


def test_round_trip_of_a_fresh_summary() -> None:
    summary = mv.make_summary(sources=500, seed=7)
    data = _seal(encode_summary(summary), sequence=(5 << 32) | 1)
    verified = ev.verify_envelope(data, KEYRING)
    assert verified.summary == decode_summary(encode_summary(summary))
    assert verified.envelope.sequence == (5 << 32) | 1


@pytest.mark.parametrize(
    "field,value",
    [
        ("sensor_id", "Bad_ID"),
        ("sensor_id", ""),
        ("sensor_id", "a" * 64),
        ("sequence", -1),
        ("sequence", 2**64),
        ("hour_start", -3600),
        ("created_us", 2**64),
    ],
)
def test_seal_rejects_out_of_range_fields(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        _seal(b"x", **{field: value})


def test_summary_for_another_sensor_is_malformed_summary() -> None:
    other = encode_summary(mv.make_summary(sensor_id="vector-02"))
    assert _reason(_seal(other)) == "malformed_summary"


def test_non_canonical_encoding_is_malformed() -> None:
    env = ev.parse_envelope(ENVELOPE)
    fields = [env.version, env.sensor_id, env.sequence, env.hour_start, env.created_us,
              env.codec, env.payload, env.signature]
    # Same values, but the version spelled as a uint8 (0xcc 0x01) instead of fixint 0x01.
    packed = bytearray(msgpack.packb(fields, use_bin_type=True))
    respelled = bytes(packed[:1]) + b"\xcc\x01" + bytes(packed[2:])
    assert msgpack.unpackb(respelled) == msgpack.unpackb(bytes(packed))
    assert _reason(respelled) == "malformed"


@pytest.mark.parametrize(
    "obj",
    [[], {}, [1], [1, "x"], "text", 1, [1, "vector-01", 1, 1, 1, "gzip", b"", b"\x00" * 64],
     [1, "vector-01", 1, 1, 1, "zstd", b"", b"\x00" * 63],
     [1, "vector-01", True, 1, 1, "zstd", b"", b"\x00" * 64],
     [1, "vector-01", 1, 1, 1, "zstd", "text", b"\x00" * 64]],
)
def test_structurally_wrong_envelopes_are_malformed(obj: object) -> None:
    assert _reason(msgpack.packb(obj, use_bin_type=True)) == "malformed"


def test_future_versions_are_unknown_version_not_malformed() -> None:
    assert _reason(msgpack.packb([2, "anything", {"new": "layout"}])) == "unknown_version"


# --- decompression bombs -----------------------------------------------------------------

FOUR_GIB = 4 << 30


def _bomb(declared: int | None) -> bytes:
    frame = mv.zstd_rle_frame(FOUR_GIB, declared=declared, block=16 * 1024)
    return ev.seal_payload(
        frame, sensor_id=mv.SENSOR_ID, sequence=1, hour_start=mv.HOUR,
        created_us=mv.CREATED_US, key=mv.vector_key(),
    )


def _in_child_with_address_space_limit(fn: Callable[[], str], headroom: int) -> str:
    """Run `fn` in a forked child whose address space may grow by at most `headroom` bytes.

    Allocating 4 GiB (or anything near it) there fails with MemoryError, which the child
    reports as "MemoryError".
    """
    with open("/proc/self/statm") as fh:
        vm_bytes = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            limit = vm_bytes + headroom
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                answer = fn()
            except MemoryError:
                answer = "MemoryError"
            os.write(write_fd, answer.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        answer = fh.read().decode()
    os.waitpid(pid, 0)
    return answer


# Room for the 64 MiB cap and the decoder, far from 4 GiB.
HEADROOM = ev.DEFAULT_MAX_SUMMARY_BYTES + (192 << 20)


@pytest.mark.parametrize("declared", [FOUR_GIB, None, 1000], ids=["declared", "none", "lying"])
def test_one_mib_envelope_of_four_gib_is_rejected_without_allocating_it(
    declared: int | None,
) -> None:
    data = _bomb(declared)
    assert 1 << 20 <= len(data) < (1 << 20) + 256
    reason = _in_child_with_address_space_limit(lambda: str(_reason(data)), HEADROOM)
    # A lying header (1000 bytes declared) trips zstd's own size check first.
    assert reason == ("malformed_summary" if declared == 1000 else "decompression_bomb")


def test_the_address_space_limit_does_bite() -> None:
    # Guard for the test above: the same limit stops a real 4 GiB allocation.
    def allocate() -> str:
        return str(len(bytearray(FOUR_GIB)))

    assert _in_child_with_address_space_limit(allocate, HEADROOM) == "MemoryError"


def test_cap_is_configurable_and_applies_to_real_summaries() -> None:
    size = len(encode_summary(mv.make_summary()))
    assert _reason(ENVELOPE, max_summary_bytes=size) is None
    assert _reason(ENVELOPE, max_summary_bytes=size - 1) == "decompression_bomb"


def test_frame_without_content_size_is_capped_by_streaming() -> None:
    frame = mv.zstd_rle_frame(10_000, declared=None)
    assert ev.decompress_capped(frame, 10_000) == bytes(10_000)
    with pytest.raises(ev.DecompressionBomb):
        ev.decompress_capped(frame, 9_999)


def test_oversized_window_is_refused() -> None:
    # Window descriptor 0x88: windowLog 27 (128 MiB), beyond MAX_WINDOW_BYTES.
    frame = b"\x28\xb5\x2f\xfd\x00\x88" + (1 | 1 << 1 | 16 << 3).to_bytes(3, "little") + b"\x00"
    with pytest.raises(ev.MalformedSummary):
        ev.decompress_capped(frame, 1 << 20)


# --- fuzzing -----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_envelope_errors(data: bytes) -> None:
    try:
        ev.verify_envelope(data, KEYRING)
    except ev.EnvelopeError as exc:
        assert exc.reason in {t.reason for t in ev.ERROR_TYPES}


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(ENVELOPE)),
    st.integers(min_value=0, max_value=len(ENVELOPE)),
    st.binary(max_size=32),
)
def test_spliced_envelopes_raise_only_envelope_errors(start: int, stop: int, insert: bytes) -> None:
    lo, hi = sorted((start, stop))
    data = ENVELOPE[:lo] + insert + ENVELOPE[hi:]
    if data == ENVELOPE:
        return
    with pytest.raises(ev.EnvelopeError):
        ev.verify_envelope(data, KEYRING)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_signed_arbitrary_payloads_raise_only_envelope_errors(payload: bytes) -> None:
    data = ev.seal_payload(
        payload, sensor_id=mv.SENSOR_ID, sequence=1, hour_start=mv.HOUR,
        created_us=1, key=mv.vector_key(),
    )
    with pytest.raises((ev.MalformedSummary, ev.DecompressionBomb)):
        ev.verify_envelope(data, KEYRING)
