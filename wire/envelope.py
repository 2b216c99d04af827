"""Envelope v1: a signed, compressed hourly summary (sans-I/O).

Strategy: an envelope is a canonical msgpack array of eight fields
`[version, sensor_id, sequence, hour_start, created_us, codec, payload, signature]`.
The Ed25519 signature covers a fixed binary layout of the seven other fields
(`signing_bytes`), not the msgpack bytes, so a central site in another language can
rebuild it without a msgpack encoder that matches ours byte for byte.  Parsing is strict:
the input must be exactly one array spelled the way msgpack's encoder spells its values
(shortest integer, string and bin headers, nothing after the array), so every accepted
envelope has one spelling and any changed byte is caught either as malformed or by the
signature.  See docs/wire-format.md for the byte-level contract.

Memory: the parser walks the eight fields of the fixed layout itself instead of unpacking
the input with msgpack.  It refuses on declared sizes (array length, string and bin
lengths against the bytes that remain and against each field's limit) before it reads what
they declare, and the payload is a memoryview slice of the input, never a copy; a payload
longer than any summary within the decompression cap compresses to is refused before the
signature check.  So refusing an envelope costs little beyond the input itself, except
that an envelope naming an enrolled sensor costs one payload-sized copy (Ed25519 signs one
contiguous byte string, the signed bytes).  Measured in tests/unit/test_envelope_memory.py.

Verification order is cheapest-and-unauthenticated first, expensive-and-authenticated last:
version (element 0), structure, payload length against the cap, sensor enrolment,
signature, then (only for signed payloads) decompression under a hard output cap, then the
summary decoder.  Each failure is a distinct
`EnvelopeError` subclass with a stable `.reason` key.

No I/O, no clock: the caller passes the key, the time and the keyring.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import msgpack
import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from wire.ids import SENSOR_ID_MAX, is_valid_sensor_id
from wire.summary import MAX_TIME_US, Summary, SummaryFormatError, decode_summary


class Keyring(Protocol):
    """What verification asks of a keyring (`wire.keys.Keyring` is the one both ends use):
    the enrolled key, or `UnknownSensor` / `RevokedSensor`."""

    def lookup(self, sensor_id: str) -> Ed25519PublicKey: ...

ENVELOPE_VERSION: Final = 1
CODEC_ZSTD: Final = "zstd"
CODECS: Final = (CODEC_ZSTD,)

# Largest summary a verifier will decompress.  A summary at the 262,144-source cap is
# 10-15 MB of msgpack; 64 MiB leaves room for growth and caps what a bad frame can cost.
DEFAULT_MAX_SUMMARY_BYTES: Final = 64 * 1024 * 1024
# Largest zstd window a verifier accepts (the decoder allocates the window up front).
# Level ZSTD_LEVEL uses 4 MiB for large inputs; 8 MiB leaves room for other levels.
MAX_WINDOW_BYTES: Final = 8 * 1024 * 1024
# Compression level the sensor uses: measured in bench/bench_envelope.py (docs/wire-format.md).
ZSTD_LEVEL: Final = 9

SIGNING_CONTEXT: Final = b"teiten-envelope\x00"
SIGNATURE_BYTES: Final = 64
U64_MAX: Final = 2**64 - 1
_DECOMPRESS_CHUNK: Final = 1024 * 1024
_FIELDS: Final = 8
_CODEC_MAX: Final = max(len(c) for c in CODECS)
# Frame header (at most 18 bytes) and checksum, and some slack, over zstd's bound on blocks.
_FRAME_SLACK: Final = 1024


class EnvelopeError(Exception):
    """Base of every verification failure; `reason` is a stable key for logs and metrics."""

    reason: str = "envelope_error"


class MalformedEnvelope(EnvelopeError):
    reason = "malformed"


class UnknownVersion(EnvelopeError):
    reason = "unknown_version"


class UnknownSensor(EnvelopeError):
    reason = "unknown_sensor"


class RevokedSensor(EnvelopeError):
    reason = "revoked"


class BadSignature(EnvelopeError):
    reason = "bad_signature"


class DecompressionBomb(EnvelopeError):
    reason = "decompression_bomb"


class MalformedSummary(EnvelopeError):
    reason = "malformed_summary"


ERROR_TYPES: Final = (
    MalformedEnvelope,
    UnknownVersion,
    UnknownSensor,
    RevokedSensor,
    BadSignature,
    DecompressionBomb,
    MalformedSummary,
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One parsed (not yet verified) envelope."""

    version: int
    sensor_id: str
    sequence: int
    hour_start: int
    created_us: int
    codec: str
    # A read-only memoryview of the input when `parse_envelope` made it (no copy); it keeps
    # the whole input alive.  `bytes(env.payload)` when a copy is wanted.
    payload: bytes | memoryview
    signature: bytes

    @property
    def epoch(self) -> int:
        """High 32 bits of the sequence: changes at every sensor process start."""
        return self.sequence >> 32

    @property
    def counter(self) -> int:
        """Low 32 bits of the sequence: +1 per envelope while the sensor keeps its state."""
        return self.sequence & 0xFFFFFFFF

    def signed_bytes(self) -> bytes:
        """What the signature covers (`signing_bytes` of this envelope's fields)."""
        return signing_bytes(
            version=self.version,
            sensor_id=self.sensor_id,
            sequence=self.sequence,
            hour_start=self.hour_start,
            created_us=self.created_us,
            codec=self.codec,
            payload=self.payload,
        )


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified envelope with its decompressed and decoded summary."""

    envelope: Envelope
    summary_bytes: bytes
    summary: Summary


def signing_bytes(
    *,
    version: int,
    sensor_id: str,
    sequence: int,
    hour_start: int,
    created_us: int,
    codec: str,
    payload: bytes | memoryview,
) -> bytes:
    """The exact bytes the Ed25519 signature covers (docs/wire-format.md, "Signed bytes")."""
    sid = sensor_id.encode("ascii")
    cod = codec.encode("ascii")
    return b"".join(
        (
            SIGNING_CONTEXT,
            struct.pack(">I", version),
            struct.pack(">B", len(sid)),
            sid,
            struct.pack(">QQQ", sequence, hour_start, created_us),
            struct.pack(">B", len(cod)),
            cod,
            struct.pack(">Q", len(payload)),
            payload,
        )
    )


def encode_envelope(env: Envelope) -> bytes:
    """Serialise an envelope (already signed) to its canonical msgpack array."""
    out: bytes = msgpack.packb(
        [
            env.version,
            env.sensor_id,
            env.sequence,
            env.hour_start,
            env.created_us,
            env.codec,
            env.payload,
            env.signature,
        ],
        use_bin_type=True,
    )
    return out


def seal_payload(
    payload: bytes,
    *,
    sensor_id: str,
    sequence: int,
    hour_start: int,
    created_us: int,
    key: Ed25519PrivateKey,
    codec: str = CODEC_ZSTD,
) -> bytes:
    """Sign an already-compressed payload.  `seal` is the normal entry point."""
    _check_fields(sensor_id, sequence, hour_start, created_us, codec, error=ValueError)
    signature = key.sign(
        signing_bytes(
            version=ENVELOPE_VERSION,
            sensor_id=sensor_id,
            sequence=sequence,
            hour_start=hour_start,
            created_us=created_us,
            codec=codec,
            payload=payload,
        )
    )
    return encode_envelope(
        Envelope(
            ENVELOPE_VERSION,
            sensor_id,
            sequence,
            hour_start,
            created_us,
            codec,
            payload,
            signature,
        )
    )


def compress_summary(summary_bytes: bytes, *, level: int = ZSTD_LEVEL) -> bytes:
    """One zstd frame with the content size in its header and a checksum."""
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)
    out: bytes = cctx.compress(summary_bytes)
    return out


def seal(
    summary_bytes: bytes,
    *,
    sensor_id: str,
    sequence: int,
    hour_start: int,
    created_us: int,
    key: Ed25519PrivateKey,
) -> bytes:
    """Compress and sign an encoded summary; returns the envelope bytes.

    Raises ValueError when a field is out of range (a bug in the caller, not bad input).
    """
    return seal_payload(
        compress_summary(summary_bytes),
        sensor_id=sensor_id,
        sequence=sequence,
        hour_start=hour_start,
        created_us=created_us,
        key=key,
    )


def _check_fields(
    sensor_id: str,
    sequence: int,
    hour_start: int,
    created_us: int,
    codec: str,
    *,
    error: type[Exception],
) -> None:
    if not is_valid_sensor_id(sensor_id):
        raise error(f"sensor id {sensor_id!r} does not match ^[a-z0-9][a-z0-9-]{{0,62}}$")
    for name, value in (
        ("sequence", sequence),
        ("hour_start", hour_start),
        ("created_us", created_us),
    ):
        if type(value) is not int or not 0 <= value <= U64_MAX:
            raise error(f"{name} {value!r} is not an unsigned 64-bit integer")
    if codec not in CODECS:
        raise error(f"codec {codec!r} is not one of {CODECS}")


def max_payload_bytes(max_summary_bytes: int) -> int:
    """The longest payload a summary of at most `max_summary_bytes` compresses to.

    zstd's ZSTD_COMPRESSBOUND (what its single-pass compressor, the sensor's, can write in the
    worst case, incompressible input) plus slack for the frame header and checksum.  A longer
    payload cannot be a summary within the cap the way a sensor seals it; `verify_parsed`
    refuses it as a `DecompressionBomb` before it checks the signature, which would copy it.
    """
    n = max_summary_bytes
    small = ((128 << 10) - n) >> 11 if n < 128 << 10 else 0
    return n + (n >> 8) + small + _FRAME_SLACK


_TYPE_NAMES: Final = (
    # (first byte at most, what a msgpack value starting with such a byte is)
    (0x7F, "integer"), (0x8F, "map"), (0x9F, "array"), (0xBF, "string"), (0xC0, "nil"),
    (0xC1, "never-used byte"), (0xC3, "boolean"), (0xC6, "bin"), (0xC9, "ext"),
    (0xCB, "float"), (0xD3, "integer"), (0xD8, "ext"), (0xDB, "string"), (0xDD, "array"),
    (0xDF, "map"), (0xFF, "integer"),
)


def _type_name(first: int) -> str:
    return next(name for top, name in _TYPE_NAMES if first <= top)


def _bytes(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


def _need(data: bytes, pos: int, n: int, what: str) -> None:
    """Refuse before reading when fewer than `n` bytes remain at `pos`."""
    if n > len(data) - pos:
        remain = max(len(data) - pos, 0)
        raise MalformedEnvelope(
            f"envelope is truncated: {what} needs {_bytes(n)} at offset {pos}, "
            f"{remain} remain{'s' if remain == 1 else ''}"
        )


def _read_int(data: bytes, pos: int, what: str) -> tuple[int, int, bool]:
    """(value, next offset, canonical) of the msgpack integer at `pos`.

    Canonical is msgpack's spelling: a non-negative value in the shortest of positive
    fixint, uint8, uint16, uint32, uint64 (signed types only ever matter as "negative").
    """
    _need(data, pos, 1, what)
    first = data[pos]
    if first <= 0x7F:
        return first, pos + 1, True
    if first >= 0xE0:
        return first - 0x100, pos + 1, False
    if 0xCC <= first <= 0xCF or 0xD0 <= first <= 0xD3:
        size = 1 << ((first - 0xCC) & 3)
        _need(data, pos + 1, size, what)
        raw = data[pos + 1 : pos + 1 + size]
        if first >= 0xD0:
            return int.from_bytes(raw, "big", signed=True), pos + 1 + size, False
        value = int.from_bytes(raw, "big")
        return value, pos + 1 + size, value >= (0x80 if size == 1 else 1 << (4 * size))
    raise MalformedEnvelope(f"{what} is a msgpack {_type_name(first)}, not an integer")


def _read_length(
    data: bytes, pos: int, what: str, *, fix: tuple[int, int] | None,
    heads: tuple[tuple[int, int], ...],
) -> tuple[int, int, bool]:
    """(declared length, offset of the body, canonical) of a str, bin or array header.

    `fix` is the (first, last) byte range of the type's fixed-length form, if it has one;
    `heads` are (first byte, bytes of length) of its longer forms, shortest first.  Canonical
    means no shorter form of the type could hold the length.  Returns length -1 (and reads
    nothing) when the value at `pos` is not of this type.
    """
    _need(data, pos, 1, what)
    first = data[pos]
    if fix is not None and fix[0] <= first <= fix[1]:
        return first - fix[0], pos + 1, True
    shorter = fix[1] - fix[0] if fix is not None else -1  # longest a shorter form can hold
    for head, size in heads:
        if first == head:
            _need(data, pos + 1, size, what)
            n = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
            return n, pos + 1 + size, n > shorter
        shorter = (1 << (8 * size)) - 1
    return -1, pos, False


_STR_HEADS: Final = ((0xD9, 1), (0xDA, 2), (0xDB, 4))
_BIN_HEADS: Final = ((0xC4, 1), (0xC5, 2), (0xC6, 4))
_ARRAY_HEADS: Final = ((0xDC, 2), (0xDD, 4))


def _read_str(data: bytes, pos: int, what: str, limit: int) -> tuple[bytes, int, bool]:
    n, body, canonical = _read_length(
        data, pos, what, fix=(0xA0, 0xBF), heads=_STR_HEADS
    )
    if n < 0:
        raise MalformedEnvelope(f"{what} is a msgpack {_type_name(data[pos])}, not a string")
    if n > limit:
        raise MalformedEnvelope(f"{what} is {_bytes(n)} long, longer than any valid one ({limit})")
    _need(data, body, n, what)
    return data[body : body + n], body + n, canonical


def _read_bin(data: bytes, pos: int, what: str) -> tuple[int, int, bool]:
    """(declared length, offset of the body, canonical) of a bin header; body not read."""
    n, body, canonical = _read_length(data, pos, what, fix=None, heads=_BIN_HEADS)
    if n < 0:
        raise MalformedEnvelope(f"{what} is a msgpack {_type_name(data[pos])}, not bin")
    return n, body, canonical


def parse_envelope(data: bytes) -> Envelope:
    """Parse the structure of an envelope; no signature, keyring or decompression.

    Reads the fixed layout of docs/wire-format.md directly: each length is checked against
    its field's limit and against what remains before anything it declares is read, and the
    payload is a memoryview slice of `data`, so a refusal costs next to nothing beyond the
    input.  An array whose element 0 is an integer other than 1 is `UnknownVersion`,
    whatever follows it.  Raises MalformedEnvelope or UnknownVersion.
    """
    if not isinstance(data, bytes):
        data = bytes(data)  # a view of a mutable buffer could change under the signature
    if not data:
        raise MalformedEnvelope("envelope is empty (0 bytes)")
    count, pos, canonical = _read_length(
        data, 0, "array header", fix=(0x90, 0x9F), heads=_ARRAY_HEADS
    )
    if count < 0:
        raise MalformedEnvelope(
            f"envelope is not a msgpack array (first byte 0x{data[0]:02x}, "
            f"a msgpack {_type_name(data[0])})"
        )
    if count == 0:
        raise MalformedEnvelope("envelope is an empty msgpack array")
    version, pos, version_canonical = _read_int(data, pos, "version")
    if version != ENVELOPE_VERSION:
        raise UnknownVersion(
            f"envelope version {version} (this verifier knows {ENVELOPE_VERSION}); "
            "upgrade the central site"
        )
    if count != _FIELDS:
        raise MalformedEnvelope(f"envelope v1 has {_FIELDS} fields, got {count}")
    if not canonical or not version_canonical:
        raise MalformedEnvelope("envelope is not canonically encoded (array header or version)")
    sid_raw, pos, sid_canonical = _read_str(data, pos, "sensor id", SENSOR_ID_MAX)
    numbers = []
    for name in ("sequence", "hour_start", "created_us"):
        value, pos, int_canonical = _read_int(data, pos, name)
        if value < 0:
            raise MalformedEnvelope(f"{name} {value} is not an unsigned 64-bit integer")
        if not int_canonical:
            raise MalformedEnvelope(
                f"envelope is not canonically encoded ({name} {value} in a longer integer)"
            )
        numbers.append(value)
    codec_raw, pos, codec_canonical = _read_str(data, pos, "codec", _CODEC_MAX)
    if not sid_canonical or not codec_canonical:
        raise MalformedEnvelope("envelope is not canonically encoded (a string header)")
    payload_len, pos, payload_canonical = _read_bin(data, pos, "payload")
    _need(data, pos, payload_len, "payload")
    payload = memoryview(data)[pos : pos + payload_len]
    pos += payload_len
    sig_len, pos, sig_canonical = _read_bin(data, pos, "signature")
    if sig_len != SIGNATURE_BYTES:
        raise MalformedEnvelope(f"signature is {_bytes(sig_len)}, not {SIGNATURE_BYTES}")
    _need(data, pos, sig_len, "signature")
    signature = data[pos : pos + sig_len]
    pos += sig_len
    if pos != len(data):
        trailing = _bytes(len(data) - pos)
        raise MalformedEnvelope(f"envelope has {trailing} after its {_FIELDS} fields")
    if not payload_canonical or not sig_canonical:
        raise MalformedEnvelope("envelope is not canonically encoded (a bin header)")
    try:
        sensor_id, codec = sid_raw.decode("ascii"), codec_raw.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedEnvelope(
            f"sensor id {sid_raw!r} or codec {codec_raw!r} is not ASCII"
        ) from None
    sequence, hour_start, created_us = numbers
    _check_fields(sensor_id, sequence, hour_start, created_us, codec, error=MalformedEnvelope)
    return Envelope(
        version, sensor_id, sequence, hour_start, created_us, codec, payload, signature
    )


def verify_envelope(
    data: bytes,
    keyring: Keyring,
    *,
    max_summary_bytes: int = DEFAULT_MAX_SUMMARY_BYTES,
    decode: Callable[[bytes], Summary] = decode_summary,
) -> Verified:
    """Parse, authenticate, decompress (capped) and decode an envelope.

    `decode` must raise `SummaryFormatError` exactly when `decode_summary` does; the
    central receiver passes `central.columns.check_summary`, which does so without building
    the table rows (its summary has empty sources, ports and destinations).
    Raises exactly one EnvelopeError subclass per failure, never anything else.
    """
    return verify_parsed(parse_envelope(data), keyring, max_summary_bytes=max_summary_bytes,
                         decode=decode)


def verify_parsed(
    env: Envelope,
    keyring: Keyring,
    *,
    max_summary_bytes: int = DEFAULT_MAX_SUMMARY_BYTES,
    decode: Callable[[bytes], Summary] = decode_summary,
) -> Verified:
    """`verify_envelope` for an envelope `parse_envelope` already gave (the receiver
    parses first, to know what to acknowledge)."""
    if env.created_us > MAX_TIME_US:
        # Representable as a date, and storable as a signed 64-bit integer by central.
        raise MalformedEnvelope(f"created_us {env.created_us} is past the year 9999")
    limit = max_payload_bytes(max_summary_bytes)
    if len(env.payload) > limit:
        # Before the signature: checking it needs a copy of the payload (the signed bytes).
        raise DecompressionBomb(
            f"payload is {len(env.payload)} bytes, longer than any summary within the "
            f"{max_summary_bytes}-byte cap compresses to ({limit}); raise max_summary_bytes "
            "if this sensor's summaries are really that large"
        )
    public_key = keyring.lookup(env.sensor_id)
    try:
        public_key.verify(env.signature, env.signed_bytes())
    except InvalidSignature:
        raise BadSignature(
            f"signature does not verify with the key enrolled for {env.sensor_id!r}"
        ) from None
    summary_bytes = decompress_capped(env.payload, max_summary_bytes)
    try:
        summary = decode(summary_bytes)
    except SummaryFormatError as exc:
        raise MalformedSummary(f"summary does not decode: {exc}") from None
    if summary.sensor_id != env.sensor_id or summary.hour_start != env.hour_start:
        raise MalformedSummary(
            f"summary is for {summary.sensor_id!r} hour {summary.hour_start}, "
            f"envelope for {env.sensor_id!r} hour {env.hour_start}"
        )
    return Verified(env, summary_bytes, summary)


def zstd_frame_length(payload: bytes | memoryview) -> int:
    """Length of the single zstd frame starting at payload[0], from its block headers.

    Raises MalformedSummary if the frame is truncated or not a zstd frame.  This lets the
    verifier insist that the payload is exactly one frame (no trailing or skippable data).
    """
    try:
        params = zstandard.get_frame_parameters(payload)
        pos = zstandard.frame_header_size(payload)
    except zstandard.ZstdError as exc:
        raise MalformedSummary(f"payload is not a zstd frame: {exc}") from None
    if payload[:4] != b"\x28\xb5\x2f\xfd":
        raise MalformedSummary("payload is not a zstd frame (bad magic)")
    while True:
        if pos + 3 > len(payload):
            raise MalformedSummary("zstd frame is truncated (block header)")
        header = int.from_bytes(payload[pos : pos + 3], "little")
        pos += 3
        last, block_type, size = header & 1, (header >> 1) & 3, header >> 3
        if block_type == 3:
            raise MalformedSummary("zstd frame has a reserved block type")
        pos += 1 if block_type == 1 else size  # an RLE block stores one byte
        if pos > len(payload):
            raise MalformedSummary("zstd frame is truncated (block body)")
        if last:
            break
    if params.has_checksum:
        pos += 4
        if pos > len(payload):
            raise MalformedSummary("zstd frame is truncated (checksum)")
    return pos


def decompress_capped(payload: bytes | memoryview, max_bytes: int) -> bytes:
    """Decompress one zstd frame, refusing to produce more than `max_bytes`.

    The declared content size is checked first (cheap rejection), but never trusted: the
    output is produced by a streaming reader in bounded chunks and counted, so a frame that
    lies about its size or declares none still stops at the cap.
    """
    if zstd_frame_length(payload) != len(payload):
        raise MalformedSummary("payload has data after its zstd frame")
    declared = zstandard.frame_content_size(payload)
    if declared > max_bytes:
        raise DecompressionBomb(
            f"payload declares {declared} bytes, over the {max_bytes}-byte cap"
        )
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
    chunks: list[bytes] = []
    total = 0
    try:
        with dctx.stream_reader(payload, read_across_frames=False) as reader:
            while True:
                chunk = reader.read(min(_DECOMPRESS_CHUNK, max_bytes + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise DecompressionBomb(
                        f"payload decompresses to more than the {max_bytes}-byte cap"
                    )
                chunks.append(chunk)
    except zstandard.ZstdError as exc:
        raise MalformedSummary(f"payload does not decompress: {exc}") from None
    if declared >= 0 and declared != total:
        raise MalformedSummary(f"payload declares {declared} bytes but holds {total}")
    return b"".join(chunks)
