"""Tests of the sensor-frame codec (models/frame.py) and of its documented contract."""

from __future__ import annotations

import json
import random
import re
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import frame as frame_module
from models.errors import FrameError
from models.frame import (
    FRAME_ERROR_REASONS,
    FRAME_VERSION,
    G_MS2,
    HEADER_SIZE,
    MAX_CHANNELS,
    MAX_JSON_BYTES,
    MAX_SAMPLE_RATE_HZ,
    MAX_SAMPLES_PER_FRAME,
    Frame,
    decode,
    encode_binary,
    encode_json,
    frame_topic,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "frame-format.md"
TS = 1_700_000_000_000_000_000
# The documented header, written out independently of the module under test.
HEADER_FMT = "<4sBBBBHHIdQqBBBB"

# docs/frame-format.md, "Known-answer frame": the same 80 bytes are printed there.
KNOWN_ANSWER_HEX = (
    "46504d46 01000100 01000100 04000000 00000000 0000c940 2a000000 00000000"
    "00002a36 fe9c9717 07060100 70756d70 2d303761 63632d30 31677800 00000000"
    "0000803f 000080bf 0000003f f7441611"
)


def known_answer_frame() -> Frame:
    return Frame(
        "pump-07", "acc-01", 42, TS, 12_800.0, "g", np.array([0.0, 1.0, -1.0, 0.5]), ("x",)
    )


def make_frame(
    channels: int = 1,
    n: int = 16,
    *,
    units: str = "g",
    names: tuple[str, ...] = (),
    seed: int = 0,
) -> Frame:
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal((channels, n)).astype(np.float32)
    return Frame("pump-07", "acc-01", 7, TS, 12_800.0, units, samples, names)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def patch(payload: bytes, offset: int, new: bytes) -> bytes:
    """Overwrite bytes of a binary frame and recompute its CRC, so the next check is reached."""
    body = bytearray(payload[:-4])
    body[offset : offset + len(new)] = new
    return with_crc(bytes(body))


def build(
    *,
    version: int = 1,
    flags: int = 0,
    dtype: int = 1,
    channels: int = 1,
    n: int = 4,
    fs: float = 12_800.0,
    seq: int = 1,
    ts: int = 0,
    asset: bytes = b"pump-07",
    sensor: bytes = b"acc-01",
    units: bytes = b"g",
    names: bytes = b"",
    data: bytes | None = None,
) -> bytes:
    """A binary frame written from the documented layout, not by the code under test."""
    header = struct.pack(
        HEADER_FMT, b"FPMF", version, flags, dtype, 0, channels, len(names), n, fs, seq, ts,
        len(asset), len(sensor), len(units), 0,
    )  # fmt: skip
    strings = asset + sensor + units + names
    pad = bytes(-(len(header) + len(strings)) % 4)
    if data is None:  # no samples at all for the huge declared sizes
        data = np.zeros(channels * n, "<f4").tobytes() if channels * n <= 1 << 16 else b""
    return with_crc(header + strings + pad + data)


def json_dict(frame: Frame) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(encode_json(frame))
    return result


def reason_of(payload: bytes | bytearray | memoryview) -> str:
    with pytest.raises(FrameError) as info:
        decode(payload)
    return info.value.reason


def assert_valid(frame: Frame) -> None:
    samples = frame.samples
    assert samples.dtype == np.float32
    assert samples.ndim == 2
    assert samples.flags.c_contiguous
    assert not samples.flags.writeable
    assert 1 <= frame.channels <= MAX_CHANNELS
    assert 1 <= frame.n_samples <= MAX_SAMPLES_PER_FRAME
    assert np.isfinite(samples).all()
    assert 0 < frame.sample_rate_hz <= MAX_SAMPLE_RATE_HZ
    assert frame.channel_names == () or len(frame.channel_names) == frame.channels


def assert_same(a: Frame, b: Frame) -> None:
    for name in ("asset_id", "sensor_id", "seq", "timestamp_ns", "sample_rate_hz", "units"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.channel_names == b.channel_names
    assert a.samples.shape == b.samples.shape
    assert np.array_equal(a.samples.view(np.uint32), b.samples.view(np.uint32))


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("encode", [encode_binary, encode_json])
@pytest.mark.parametrize(
    ("channels", "names", "units"),
    [(1, (), "g"), (1, ("x",), "m/s^2"), (3, ("x", "y", "z"), "g"), (3, (), "m/s^2")],
)
def test_round_trip(encode: Any, channels: int, names: tuple[str, ...], units: str) -> None:
    frame = make_frame(channels, 64, units=units, names=names)

    decoded = decode(encode(frame))

    assert_same(decoded, frame)
    assert_valid(decoded)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_decode_accepts_bytes_like(wrap: Any) -> None:
    frame = make_frame(2, 8)

    assert_same(decode(wrap(encode_binary(frame))), frame)
    assert_same(decode(wrap(encode_json(frame))), frame)


def test_float64_input_is_normalised_to_float32_channels() -> None:
    samples = np.linspace(-1.0, 1.0, 100)  # float64, 1-D

    frame = Frame("a", "s", 0, 0, 100.0, "g", samples)

    assert frame.samples.dtype == np.float32
    assert frame.samples.shape == (1, 100)
    assert (frame.channels, frame.n_samples) == (1, 100)
    assert np.allclose(frame.samples[0], samples, atol=1e-7)
    assert_same(decode(encode_binary(frame)), frame)


def test_non_contiguous_and_integer_input_becomes_c_contiguous_float32() -> None:
    fortran = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))

    frame = Frame("a", "s", 0, 0, 100.0, "g", fortran[:, ::2])  # type: ignore[arg-type]

    assert frame.samples.flags.c_contiguous
    assert frame.samples.tolist() == [[0, 2], [4, 6], [8, 10]]


def test_json_round_trip_is_bit_exact_for_every_kind_of_float32() -> None:
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, size=4096, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38])
    values = np.concatenate([bits.view(np.float32), specials.astype(np.float32)])
    values = values[np.isfinite(values)]
    frame = Frame("a", "s", 0, 0, 100.0, "g", values)

    decoded = decode(encode_json(frame))

    assert np.array_equal(decoded.samples.view(np.uint32), frame.samples.view(np.uint32))


def test_samples_in_g_converts_ms2() -> None:
    frame = Frame("a", "s", 0, 0, 100.0, "m/s^2", np.array([[G_MS2, -2 * G_MS2, 0.0]]))

    in_g = frame.samples_in_g()

    assert in_g.dtype == np.float32
    assert np.allclose(in_g, [[1.0, -2.0, 0.0]], rtol=1e-6)
    same = make_frame(units="g")
    assert np.array_equal(same.samples_in_g(), same.samples)


def test_duration_and_end_timestamp() -> None:
    frame = Frame("a", "s", 0, TS, 12_800.0, "g", np.zeros(1024))
    odd = Frame("a", "s", 0, 0, 3.0, "g", np.zeros(1))

    assert frame.duration_ns == 80_000_000
    assert frame.end_timestamp_ns() == TS + 80_000_000
    assert odd.duration_ns == 333_333_333


def test_decode_of_bytes_is_zero_copy_and_of_bytearray_is_a_copy() -> None:
    payload = encode_binary(make_frame(2, 32))
    buffer = bytearray(payload)

    shared = decode(payload)
    copied = decode(buffer)
    buffer[HEADER_SIZE + 16 : -4] = bytes(len(buffer) - HEADER_SIZE - 20)

    assert np.shares_memory(shared.samples, np.frombuffer(payload, np.uint8))
    assert_same(copied, shared)


def test_frame_is_immutable() -> None:
    frame = make_frame()

    with pytest.raises(AttributeError):
        frame.seq = 8  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        frame.samples[0, 0] = 1.0


# --- the documented layout ---------------------------------------------------------------


def test_binary_header_layout_matches_the_documented_offsets() -> None:
    names = ("x", "y", "z")
    frame = Frame("pump-07", "acc-01", 2**64 - 1, TS, 25_600.0, "m/s^2", np.ones((3, 5)), names)

    payload = encode_binary(frame)

    def u(offset: int, size: int) -> int:
        return int.from_bytes(payload[offset : offset + size], "little")

    assert payload[0:4] == b"FPMF"
    assert (payload[4], payload[5], payload[6], payload[7]) == (1, 0, 1, 0)
    assert u(8, 2) == 3  # channels
    assert u(10, 2) == len("x,y,z")  # channel names length
    assert u(12, 4) == 5  # n_samples
    assert struct.unpack_from("<d", payload, 16) == (25_600.0,)
    assert u(24, 8) == 2**64 - 1  # seq
    assert u(32, 8) == TS  # timestamp_ns
    assert (payload[40], payload[41], payload[42], payload[43]) == (7, 6, 5, 0)
    assert HEADER_SIZE == 44
    assert payload[44:68] == b"pump-07acc-01m/s^2x,y,z" + b"\0"  # 23 bytes of text, 1 pad
    assert np.frombuffer(payload, "<f4", 15, 68).tolist() == [1.0] * 15
    assert len(payload) == 68 + 60 + 4
    assert u(128, 4) == zlib.crc32(payload[:128])
    assert payload == build(
        channels=3, n=5, fs=25_600.0, seq=2**64 - 1, ts=TS, units=b"m/s^2", names=b"x,y,z",
        data=np.ones(15, "<f4").tobytes(),
    )  # fmt: skip


def test_known_answer_frame_matches_the_document() -> None:
    expected = bytes.fromhex(KNOWN_ANSWER_HEX.replace(" ", ""))
    block = re.search(r"<!-- known-answer-frame -->\s*```text\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None, "docs/frame-format.md lost its known-answer block"
    dumped = "".join(line[6:54] for line in block.group(1).splitlines())

    assert encode_binary(known_answer_frame()) == expected
    assert bytes.fromhex(dumped.replace(" ", "")) == expected
    assert_same(decode(expected), known_answer_frame())


def test_document_lists_every_reason_and_json_example_decodes() -> None:
    text = DOC.read_text()
    example = re.search(r"<!-- json-example -->\s*```json\n(.*?)```", text, re.S)

    assert all(f"`{reason}`" in text for reason in FRAME_ERROR_REASONS)
    assert example is not None
    assert_valid(decode(example.group(1).encode()))


def test_json_form_shape() -> None:
    one = json_dict(make_frame(1, 3, names=("x",)))
    three = json_dict(make_frame(3, 2))

    keys = ["v", "asset_id", "sensor_id", "seq", "ts_ns", "fs", "units", "channels", "data"]
    assert list(one) == keys
    assert one["v"] == FRAME_VERSION
    assert len(one["data"]) == 3
    assert all(isinstance(x, float) for x in one["data"])
    assert "channels" not in three
    assert [len(row) for row in three["data"]] == [2, 2, 2]


def test_frame_topic() -> None:
    assert frame_topic("plant-a", "pump-07", "acc-01") == "fedpm/v1/plant-a/pump-07/acc-01/frames"
    for bad in ("", "a/b", "+", "#", "$SYS", "x" * 65):
        with pytest.raises(FrameError) as info:
            frame_topic("plant-a", bad, "acc-01")
        assert info.value.reason == "bad_id"


# --- rejections: binary ------------------------------------------------------------------


def test_empty_payload() -> None:
    assert reason_of(b"") == "empty"
    assert reason_of(bytearray()) == "empty"


@pytest.mark.parametrize("channels", [1, 3])
def test_truncation_at_every_byte_is_reported_as_truncated(channels: int) -> None:
    names = ("x", "y", "z")[:channels]
    payload = encode_binary(make_frame(channels, 8, names=names))

    reasons = {k: reason_of(payload[:k]) for k in range(1, len(payload))}

    assert set(reasons.values()) == {"truncated"}


def test_trailing_bytes() -> None:
    assert reason_of(encode_binary(make_frame()) + b"\0") == "length_mismatch"


def test_flipped_crc_or_sample_byte_is_bad_checksum() -> None:
    payload = encode_binary(make_frame(1, 8))
    for offset in (-4, -1, -5, 60):
        damaged = bytearray(payload)
        damaged[offset] ^= 0x80
        assert reason_of(bytes(damaged)) == "bad_checksum"


def test_bad_magic() -> None:
    assert reason_of(b"XPMF" + bytes(60)) == "bad_magic"
    assert reason_of(b"\x00") == "bad_magic"
    assert reason_of(b"FPX") == "bad_magic"


@pytest.mark.parametrize("version", [0, 2, 255])
def test_other_binary_versions_are_unsupported(version: int) -> None:
    assert reason_of(build(version=version)) == "unsupported_version"
    assert reason_of(build(version=version)[:6]) == "unsupported_version"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_binary_sample(value: float) -> None:
    payload = build(data=np.array([0, value, 0, 0], "<f4").tobytes())

    assert reason_of(payload) == "non_finite"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"n": 0xFFFF_FFFF}, "too_large"),
        ({"n": MAX_SAMPLES_PER_FRAME + 1}, "too_large"),
        ({"channels": MAX_CHANNELS + 1}, "too_large"),
        ({"channels": 0xFFFF}, "too_large"),
        ({"channels": 0}, "bad_field"),
        ({"n": 0}, "bad_field"),
        ({"flags": 1}, "bad_field"),
        ({"dtype": 2}, "bad_field"),
        ({"fs": float("nan")}, "bad_sample_rate"),
        ({"fs": 0.0}, "bad_sample_rate"),
        ({"fs": 2e6}, "bad_sample_rate"),
        ({"ts": -1}, "bad_field"),
        ({"asset": b""}, "bad_id"),
        ({"asset": b"pump/07"}, "bad_id"),
        ({"asset": b"\xff\xfe"}, "bad_id"),
        ({"sensor": b"x" * 65}, "bad_id"),
        ({"units": b"G"}, "bad_units"),
        ({"units": b"\xc3"}, "bad_units"),
        ({"names": b"x,y"}, "bad_field"),
        ({"names": b"\xc3"}, "bad_field"),
    ],
)
def test_invalid_binary_header_fields(fields: dict[str, Any], reason: str) -> None:
    assert reason_of(build(**fields)) == reason


def test_reserved_and_padding_bytes_must_be_zero() -> None:
    payload = encode_binary(make_frame())  # strings end at 58, samples start at 60
    for offset in (7, 43, 58, 59):
        assert reason_of(patch(payload, offset, b"\x01")) == "bad_field"


def test_huge_declared_size_is_rejected_without_allocating() -> None:
    header_only = build(channels=MAX_CHANNELS, n=MAX_SAMPLES_PER_FRAME, data=b"")  # 64 MiB claimed

    tracemalloc.start()
    try:
        reason = reason_of(header_only)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert reason == "truncated"
    assert peak < 64 * 1024


# --- rejections: JSON --------------------------------------------------------------------


def json_payload(**changes: Any) -> bytes:
    obj = json_dict(make_frame(1, 4))
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "token", ["NaN", "Infinity", "-Infinity", "1e400", "-1e39", "1" + "0" * 400]
)
def test_non_finite_json_sample(token: str) -> None:
    payload = json_payload(data=[0.0, 1.0]).replace(b"1.0]", token.encode() + b"]")

    assert reason_of(payload) == "non_finite"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"v": 2}, "unsupported_version"),
        ({"v": 0}, "unsupported_version"),
        ({"v": True}, "unsupported_version"),
        ({"v": "1"}, "unsupported_version"),
        ({"v": 1.0}, "unsupported_version"),
        ({"v": ...}, "missing_field"),
        ({"asset_id": ...}, "missing_field"),
        ({"sensor_id": ...}, "missing_field"),
        ({"seq": ...}, "missing_field"),
        ({"ts_ns": ...}, "missing_field"),
        ({"fs": ...}, "missing_field"),
        ({"units": ...}, "missing_field"),
        ({"data": ...}, "missing_field"),
        ({"extra": 1}, "bad_field"),
        ({"seq": True}, "bad_field"),
        ({"seq": 1.0}, "bad_field"),
        ({"seq": -1}, "bad_field"),
        ({"seq": 2**64}, "bad_field"),
        ({"ts_ns": "0"}, "bad_field"),
        ({"ts_ns": 2**63}, "bad_field"),
        ({"fs": True}, "bad_sample_rate"),
        ({"fs": "12800"}, "bad_sample_rate"),
        ({"fs": -1}, "bad_sample_rate"),
        ({"fs": float("inf")}, "non_finite"),  # json.dumps writes the Infinity token
        ({"units": "mg"}, "bad_units"),
        ({"units": None}, "bad_units"),
        ({"asset_id": "pump 07"}, "bad_id"),
        ({"asset_id": 7}, "bad_id"),
        ({"sensor_id": "\ud800"}, "bad_id"),
        ({"channels": "x"}, "bad_field"),
        ({"channels": ["x", "y"]}, "bad_field"),
        ({"channels": [1]}, "bad_field"),
        ({"data": []}, "bad_field"),
        ({"data": [[]]}, "bad_field"),
        ({"data": [True, 1.0]}, "bad_field"),
        ({"data": [1.0, None]}, "bad_field"),
        ({"data": [1.0, "2"]}, "bad_field"),
        ({"data": [1.0, [2.0]]}, "bad_field"),
        ({"data": [[1.0], 2.0]}, "bad_field"),
        ({"data": [[1.0, 2.0], [3.0]]}, "bad_field"),
        ({"data": [[[1.0]]]}, "bad_field"),
        ({"data": {"x": [1.0]}}, "bad_field"),
        ({"data": [[0.0]] * (MAX_CHANNELS + 1)}, "too_large"),
    ],
)
def test_invalid_json_fields(changes: dict[str, Any], reason: str) -> None:
    assert reason_of(json_payload(**changes)) == reason


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b"{}x",
        b'{"v":1,"v":1}',
        b'{"v":1,}',
        b"{\x00\x00\x00",
        '{"v":1}'.encode("utf-16-le"),
        b'{"asset_id":"\xff"}',
        b'{"v":' + b"[" * 100_000,
    ],
)
def test_bad_json(payload: bytes) -> None:
    assert reason_of(payload) == "bad_json"


def test_json_truncated_at_every_byte_is_a_frame_error() -> None:
    payload = encode_json(make_frame(2, 3, names=("x", "y")))

    reasons = {reason_of(payload[:k]) for k in range(1, len(payload))}

    assert reasons == {"bad_json"}


def test_oversized_json_is_rejected_before_parsing() -> None:
    payload = b"{" + b" " * MAX_JSON_BYTES

    assert reason_of(payload) == "too_large"
    assert reason_of(json_payload(data=[0] * (MAX_SAMPLES_PER_FRAME + 1))) == "too_large"


def test_encode_json_refuses_what_decode_would_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frame_module, "MAX_JSON_BYTES", 100)

    with pytest.raises(FrameError) as info:
        encode_json(make_frame(1, 64))

    assert info.value.reason == "too_large"


# --- rejections: constructing a Frame ----------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"asset_id": ""}, "bad_id"),
        ({"asset_id": "x" * 65}, "bad_id"),
        ({"asset_id": "pümp"}, "bad_id"),
        ({"sensor_id": "a+b"}, "bad_id"),
        ({"sensor_id": "a\n"}, "bad_id"),
        ({"sensor_id": b"acc"}, "bad_id"),
        ({"units": "G"}, "bad_units"),
        ({"units": "m/s2"}, "bad_units"),
        ({"sample_rate_hz": 0.0}, "bad_sample_rate"),
        ({"sample_rate_hz": -5.0}, "bad_sample_rate"),
        ({"sample_rate_hz": float("nan")}, "bad_sample_rate"),
        ({"sample_rate_hz": float("inf")}, "bad_sample_rate"),
        ({"sample_rate_hz": MAX_SAMPLE_RATE_HZ * 2}, "bad_sample_rate"),
        ({"sample_rate_hz": True}, "bad_sample_rate"),
        ({"seq": -1}, "bad_field"),
        ({"seq": 2**64}, "bad_field"),
        ({"seq": 1.5}, "bad_field"),
        ({"seq": np.True_}, "bad_field"),
        ({"timestamp_ns": -1}, "bad_field"),
        ({"timestamp_ns": 2**63}, "bad_field"),
        ({"samples": np.zeros((1, 2, 3))}, "bad_field"),
        ({"samples": np.zeros((0, 4))}, "bad_field"),
        ({"samples": np.zeros(0)}, "bad_field"),
        ({"samples": np.zeros(4, dtype=complex)}, "bad_field"),
        ({"samples": np.zeros(4, dtype=bool)}, "bad_field"),
        ({"samples": np.array(["1", "2"])}, "bad_field"),
        ({"samples": [[1.0], [2.0, 3.0]]}, "bad_field"),
        ({"samples": np.array([1.0, np.nan])}, "non_finite"),
        ({"samples": np.array([1.0, -np.inf])}, "non_finite"),
        ({"samples": np.array([1.0, 1e39])}, "non_finite"),  # float32 overflow, no warning
        ({"samples": np.zeros((MAX_CHANNELS + 1, 2))}, "too_large"),
        ({"samples": np.zeros(MAX_SAMPLES_PER_FRAME + 1, np.float32)}, "too_large"),
        ({"channel_names": ("x", "y")}, "bad_field"),
        ({"channel_names": "x"}, "bad_field"),
        ({"channel_names": ("a,b",)}, "bad_field"),
    ],
)
def test_invalid_frame_fields(changes: dict[str, Any], reason: str) -> None:
    fields: dict[str, Any] = {
        "asset_id": "pump-07", "sensor_id": "acc-01", "seq": 0, "timestamp_ns": 0,
        "sample_rate_hz": 100.0, "units": "g", "samples": np.zeros(4), "channel_names": (),
    }  # fmt: skip
    fields.update(changes)

    with pytest.raises(FrameError) as info:
        Frame(**fields)

    assert info.value.reason == reason


def test_duplicate_channel_names() -> None:
    with pytest.raises(FrameError) as info:
        Frame("a", "s", 0, 0, 1.0, "g", np.zeros((2, 2)), ("x", "x"))

    assert info.value.reason == "bad_field"


def test_numpy_scalars_are_accepted_for_numbers() -> None:
    frame = Frame("a", "s", np.uint64(2**64 - 1), np.int64(5), np.float32(100.0), "g", [1, 2])  # type: ignore[arg-type]

    assert (frame.seq, frame.timestamp_ns, frame.sample_rate_hz) == (2**64 - 1, 5, 100.0)
    assert type(frame.seq) is int
    assert type(frame.sample_rate_hz) is float


# --- fuzz --------------------------------------------------------------------------------

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, MAX_SAMPLES_PER_FRAME]


def decode_or_reason(payload: bytes) -> Frame | str:
    """Decode must return a valid Frame or raise a FrameError with a documented reason."""
    try:
        frame = decode(payload)
    except FrameError as exc:
        reason = exc.reason
    else:
        assert_valid(frame)
        return frame
    assert reason in FRAME_ERROR_REASONS, reason
    return reason


def mutate(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(rng.randint(1, 3)):
        position = rng.randrange(len(data)) if data else 0
        op = rng.randrange(6)
        if op == 0 and data:
            data[position] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            data[position] = rng.choice([0, 0x20, 0x2C, 0x7B, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            del data[position : position + rng.randint(1, 8)]
        elif op == 3:
            data[position:position] = rng.randbytes(rng.randint(1, 8))
        elif op == 4:
            del data[rng.randrange(len(data) + 1) :]
        else:
            size = rng.choice([1, 2, 4, 8])
            value = rng.choice(INTERESTING) & ((1 << (8 * size)) - 1)
            data[position : position + size] = value.to_bytes(size, "little")
    return bytes(data)


def test_fuzz_binary_mutations() -> None:
    rng = random.Random(20_240_601)
    seeds = [encode_binary(make_frame(c, n, names=names)) for c, n, names in
             [(1, 4, ()), (3, 5, ("x", "y", "z")), (2, 1, ())]]  # fmt: skip
    outcomes: dict[str, int] = {}

    for i in range(3000):
        payload = mutate(rng, rng.choice(seeds))
        if i % 2 and len(payload) >= 4:  # half with a valid CRC, to reach the field checks
            payload = with_crc(payload[:-4])
        result = decode_or_reason(payload)
        key = result if isinstance(result, str) else "ok"
        outcomes[key] = outcomes.get(key, 0) + 1

    assert {"bad_checksum", "truncated", "bad_field", "ok"} <= outcomes.keys()


def test_fuzz_json_mutations() -> None:
    rng = random.Random(7)
    base = json_dict(make_frame(2, 3, names=("x", "y")))
    pool: list[Any] = [
        None, True, False, 0, -1, 1.5, 2**64, -(2**63), 1e308, "", "g", "x" * 70, [], {}, [[]],
        [1, 2], [[1], [2, 3]], [True], ["a"], [[1.0, 2.0], [3.0, 4.0]], [None], {"v": 1},
    ]  # fmt: skip
    outcomes: set[str] = set()

    for _ in range(1500):
        obj = dict(base)
        key = rng.choice([*obj, "extra"])
        if rng.random() < 0.2:
            obj.pop(key, None)
        else:
            obj[key] = rng.choice(pool)
        payload = json.dumps(obj).encode()
        for candidate in (payload, mutate(rng, payload)):
            result = decode_or_reason(candidate)
            outcomes.add(result if isinstance(result, str) else "ok")

    assert {"bad_json", "bad_field", "missing_field", "unsupported_version"} <= outcomes
