"""Envelope v1: a signed, compressed hourly summary (sans-I/O).

Strategy: an envelope is a canonical msgpack array of eight fields
`[version, sensor_id, sequence, hour_start, created_us, codec, payload, signature]`.
The Ed25519 signature covers a fixed binary layout of the seven other fields
(`signing_bytes`), not the msgpack bytes, so a central site in another language can
rebuild it without a msgpack encoder that matches ours byte for byte.  Parsing is strict:
the input must be exactly one array whose re-encoding is byte-identical to the input, so
every accepted envelope has one spelling and any changed byte is caught either as
malformed or by the signature.  See docs/wire-format.md for the byte-level contract.

Verification order is cheapest-and-unauthenticated first, expensive-and-authenticated last:
structure, version, sensor enrolment, signature, then (only for signed payloads)
decompression under a hard output cap, then the summary decoder.  Each failure is a distinct
`EnvelopeError` subclass with a stable `.reason` key.

No I/O, no clock: the caller passes the key, the time and the keyring.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgpack
import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sensor.summary import MAX_TIME_US, Summary, SummaryFormatError, decode_summary

if TYPE_CHECKING:
    from uplink.keys import Keyring

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
SENSOR_ID_MAX: Final = 63
_DECOMPRESS_CHUNK: Final = 1024 * 1024
_FIELDS: Final = 8


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
    payload: bytes
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


def is_valid_sensor_id(value: str) -> bool:
    """`^[a-z0-9][a-z0-9-]{0,62}$`, without a regex engine on the hot path."""
    if not 1 <= len(value) <= SENSOR_ID_MAX or not value.isascii():
        return False
    if not (value[0].islower() or value[0].isdigit()):
        return False
    return all(c.islower() or c.isdigit() or c == "-" for c in value)


def signing_bytes(
    *,
    version: int,
    sensor_id: str,
    sequence: int,
    hour_start: int,
    created_us: int,
    codec: str,
    payload: bytes,
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


def parse_envelope(data: bytes) -> Envelope:
    """Parse the structure of an envelope; no signature, keyring or decompression.

    Raises MalformedEnvelope or UnknownVersion.
    """
    try:
        obj: Any = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, timestamp=0
        )
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise MalformedEnvelope(f"not a msgpack value: {exc}") from None
    if type(obj) is not list or not obj:
        raise MalformedEnvelope("envelope is not a non-empty msgpack array")
    version = obj[0]
    if type(version) is not int:
        raise MalformedEnvelope("envelope version is not an integer")
    if version != ENVELOPE_VERSION:
        raise UnknownVersion(
            f"envelope version {version} (this verifier knows {ENVELOPE_VERSION}); "
            "upgrade the central site"
        )
    if len(obj) != _FIELDS:
        raise MalformedEnvelope(f"envelope v1 has {_FIELDS} fields, got {len(obj)}")
    _, sensor_id, sequence, hour_start, created_us, codec, payload, signature = obj
    if type(sensor_id) is not str or type(codec) is not str:
        raise MalformedEnvelope("sensor id and codec must be msgpack strings")
    if type(payload) is not bytes or type(signature) is not bytes:
        raise MalformedEnvelope("payload and signature must be msgpack bin")
    if len(signature) != SIGNATURE_BYTES:
        raise MalformedEnvelope(f"signature is {len(signature)} bytes, not {SIGNATURE_BYTES}")
    _check_fields(sensor_id, sequence, hour_start, created_us, codec, error=MalformedEnvelope)
    env = Envelope(
        version, sensor_id, sequence, hour_start, created_us, codec, payload, signature
    )
    # One spelling per envelope: reject non-minimal integers, str8 for a fixstr, etc.
    if encode_envelope(env) != data:
        raise MalformedEnvelope("envelope is not canonically encoded")
    return env


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


def zstd_frame_length(payload: bytes) -> int:
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


def decompress_capped(payload: bytes, max_bytes: int) -> bytes:
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
