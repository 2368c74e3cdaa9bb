"""Versioned sensor-frame codec: one frame of raw accelerometer samples on MQTT.

A :class:`Frame` carries the sensor identity, sequence number, timestamp, sample rate, units
and a ``(channels, n)`` float32 block of samples. It has two wire forms, told apart by the
first byte: a compact little-endian binary form (magic ``b"FPMF"``) and a JSON form (``{``).
The contract, with a byte-by-byte table, is in ``docs/frame-format.md``.

Every decoding or validation failure raises :class:`models.errors.FrameError`, whose
``reason`` is one of :data:`FRAME_ERROR_REASONS`.

Examples
--------
>>> import numpy as np
>>> frame = Frame("pump-07", "acc-01", 0, 0, 12_000.0, "g", np.zeros(1024))
>>> len(encode_binary(frame))
4160
>>> decode(encode_json(frame)).duration_ns
85333333
"""

from __future__ import annotations

import json
import math
import operator
import re
import struct
import zlib
from dataclasses import dataclass
from numbers import Real
from typing import Any, Final, NoReturn

import numpy as np
import numpy.typing as npt

from models.errors import FrameError

FRAME_VERSION: Final = 1
MAX_SAMPLES_PER_FRAME: Final = 1 << 20  # per channel
MAX_CHANNELS: Final = 16
MAX_SAMPLE_RATE_HZ: Final = 1_000_000.0
UNITS: Final = ("g", "m/s^2")  # acceleration units accepted
G_MS2: Final = 9.80665  # standard gravity, m/s^2 per g

MAGIC: Final = b"FPMF"
#: Largest JSON payload read: one full channel at 32 bytes a sample. Bigger frames go binary.
MAX_JSON_BYTES: Final = 32 * MAX_SAMPLES_PER_FRAME

#: Every ``FrameError.reason`` this module raises (for pre-registering counters).
# fmt: off
FRAME_ERROR_REASONS: Final = frozenset((
    "empty", "bad_magic", "unsupported_version", "truncated", "length_mismatch", "bad_json",
    "missing_field", "bad_field", "non_finite", "bad_sample_rate", "too_large", "bad_checksum",
    "bad_units", "bad_id",
))
# fmt: on

# magic, version, flags, dtype, reserved, channels, names_len, n_samples, sample_rate_hz,
# seq, timestamp_ns, asset_id_len, sensor_id_len, units_len, reserved
_HEADER: Final = struct.Struct("<4sBBBBHHIdQqBBBB")
HEADER_SIZE: Final = _HEADER.size  # 44
_CRC: Final = struct.Struct("<I")
_DTYPE_FLOAT32: Final = 1
_LE_F32: Final = np.dtype("<f4")
_JSON_REQUIRED: Final = ("v", "asset_id", "sensor_id", "seq", "ts_ns", "fs", "units", "data")
_JSON_KEYS: Final = frozenset((*_JSON_REQUIRED, "channels"))
_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_U64_MAX: Final = (1 << 64) - 1
_I64_MAX: Final = (1 << 63) - 1
_format_sample: Final = "%.9g".__mod__  # 9 significant digits round-trip every float32


def _fail(reason: str, message: str) -> NoReturn:
    raise FrameError(reason, message)


def _check_name(value: object, what: str, reason: str) -> str:
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        _fail(reason, f"{what} must match [A-Za-z0-9_.:-]{{1,64}}, got {value!r:.80}")
    return value


def _check_int(value: object, what: str, high: int) -> int:
    if type(value) is int and 0 <= value <= high:  # the common case, checked first
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        _fail("bad_field", f"{what} must be an integer, got {type(value).__name__}")
    number = operator.index(value)
    if not 0 <= number <= high:
        _fail("bad_field", f"{what} must be in [0, {high}], got {number}")
    return number


def _check_sample_rate(value: object) -> float:
    if type(value) is float and 0.0 < value <= MAX_SAMPLE_RATE_HZ:  # finite: NaN fails too
        return value
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
        _fail("bad_sample_rate", f"sample rate must be a number, got {type(value).__name__}")
    fs = float(value)
    if not (math.isfinite(fs) and 0.0 < fs <= MAX_SAMPLE_RATE_HZ):
        _fail("bad_sample_rate", f"sample rate must be in (0, {MAX_SAMPLE_RATE_HZ:g}] Hz, got {fs}")
    return fs


def _duration_ns(n_samples: int, sample_rate_hz: float) -> int:
    """``round(n_samples * 1e9 / sample_rate_hz)`` exactly (half to even), in integers."""
    p, q = sample_rate_hz.as_integer_ratio()
    quotient, remainder = divmod(n_samples * 1_000_000_000 * q, p)
    twice = 2 * remainder
    if twice > p or (twice == p and quotient & 1):
        quotient += 1
    return quotient


def _all_finite(samples: npt.NDArray[np.float32]) -> bool:
    """Whether every sample is finite (one ufunc pass, no floating-point warnings)."""
    return bool(np.isfinite(samples).all())


def _check_samples(value: object) -> npt.NDArray[np.float32]:
    if (
        type(value) is np.ndarray
        and value.dtype == np.float32
        and value.ndim == 2
        and value.flags.c_contiguous
        and 0 < value.shape[0] <= MAX_CHANNELS
        and 0 < value.shape[1] <= MAX_SAMPLES_PER_FRAME
    ):  # already what a frame holds (a decoded binary payload): only finiteness to check
        if not _all_finite(value):
            _fail("non_finite", "samples must be finite (NaN, Inf or a float32 overflow found)")
        view = value.view()
        view.flags.writeable = False
        return view
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise FrameError("bad_field", f"samples are not a numeric array: {exc}") from exc
    if array.dtype.kind not in "fiu":
        _fail("bad_field", f"samples must be real numbers, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2:
        _fail("bad_field", f"samples must be 1-D or (channels, n), got shape {array.shape}")
    channels, n = array.shape
    if channels == 0 or n == 0:
        _fail("bad_field", f"samples must not be empty, got shape {array.shape}")
    if channels > MAX_CHANNELS or n > MAX_SAMPLES_PER_FRAME:
        _fail(
            "too_large",
            f"samples shape {array.shape} exceeds {MAX_CHANNELS} channels "
            f"or {MAX_SAMPLES_PER_FRAME} samples per channel",
        )
    with np.errstate(all="ignore"):  # overflow to inf is reported below, not warned
        out = np.ascontiguousarray(array, dtype=np.float32)
    if not _all_finite(out):
        _fail("non_finite", "samples must be finite (NaN, Inf or a float32 overflow found)")
    view = out.view()
    view.flags.writeable = False
    return view


def _check_channel_names(value: object, channels: int) -> tuple[str, ...]:
    if type(value) is tuple and not value:
        return ()
    if not isinstance(value, tuple | list):
        _fail("bad_field", f"channel names must be a tuple of str, got {type(value).__name__}")
    names = tuple(_check_name(name, "channel name", "bad_field") for name in value)
    if names and len(names) != channels:
        _fail("bad_field", f"{len(names)} channel names for {channels} channels")
    if len(set(names)) != len(names):
        _fail("bad_field", f"channel names must be unique, got {names}")
    return names


@dataclass(frozen=True, eq=False)
class Frame:
    """One block of raw samples from one sensor, validated on construction.

    Parameters
    ----------
    asset_id, sensor_id : str
        Identity of the machine and of the sensor on it, ``[A-Za-z0-9_.:-]{1,64}``.
    seq : int
        Frame counter per sensor, ``0 .. 2**64 - 1``, +1 per frame, so gaps and duplicates
        (MQTT QoS 1 redelivery) can be detected.
    timestamp_ns : int
        UNIX time of the first sample in ns, ``0 .. 2**63 - 1``.
    sample_rate_hz : float
        Sampling rate in Hz, finite, ``0 < fs <= MAX_SAMPLE_RATE_HZ``.
    units : str
        Acceleration units of the samples, one of :data:`UNITS`.
    samples : numpy.ndarray
        Real samples, shape ``(channels, n)`` or ``(n,)`` for one channel. Stored as a
        read-only C-contiguous float32 ``(channels, n)`` array; it is not copied when it is
        already one, so do not modify the array you passed in afterwards.
    channel_names : tuple of str, optional
        Empty, or one unique name per channel (same pattern as the ids).

    Raises
    ------
    FrameError
        With reason ``bad_id``, ``bad_field``, ``bad_sample_rate``, ``bad_units``,
        ``non_finite`` or ``too_large``.
    """

    asset_id: str
    sensor_id: str
    seq: int
    timestamp_ns: int
    sample_rate_hz: float
    units: str
    samples: npt.NDArray[np.floating[Any]]
    channel_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self.asset_id, "asset_id", "bad_id")
        _check_name(self.sensor_id, "sensor_id", "bad_id")
        if not isinstance(self.units, str) or self.units not in UNITS:
            _fail("bad_units", f"units must be one of {UNITS}, got {self.units!r:.80}")
        samples = _check_samples(self.samples)
        normalised = {
            "seq": _check_int(self.seq, "seq", _U64_MAX),
            "timestamp_ns": _check_int(self.timestamp_ns, "timestamp_ns", _I64_MAX),
            "sample_rate_hz": _check_sample_rate(self.sample_rate_hz),
            "samples": samples,
            "channel_names": _check_channel_names(self.channel_names, samples.shape[0]),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    @property
    def channels(self) -> int:
        """Number of channels (rows of ``samples``)."""
        return int(self.samples.shape[0])

    @property
    def n_samples(self) -> int:
        """Number of samples per channel (columns of ``samples``)."""
        return int(self.samples.shape[1])

    @property
    def duration_ns(self) -> int:
        """Time covered by the frame, ``n_samples / sample_rate_hz``, in ns (rounded).

        Exact: the rate's float is taken as the fraction it is (``p / q``) and
        ``n * 1e9 * q / p`` is rounded half to even in integers, as ``round(Fraction(...))``
        would, at a fifth of its cost.
        """
        return _duration_ns(self.n_samples, self.sample_rate_hz)

    def end_timestamp_ns(self) -> int:
        """Return the exclusive end time in ns: when the next contiguous frame starts.

        Returns
        -------
        int
            ``timestamp_ns + duration_ns``; a following frame of the same sensor with a later
            ``timestamp_ns`` leaves a gap, one with an earlier one overlaps.
        """
        return self.timestamp_ns + self.duration_ns

    def samples_in_g(self) -> npt.NDArray[np.float32]:
        """Return the samples in g (standard gravity, ``G_MS2`` m/s^2).

        Returns
        -------
        numpy.ndarray
            float32, shape ``(channels, n)``. For a frame already in g this is the frame's own
            read-only array; otherwise a new array ``samples / G_MS2``.
        """
        samples = np.asarray(self.samples, dtype=np.float32)
        if self.units == "g":
            return samples
        return np.divide(samples, np.float32(G_MS2), dtype=np.float32)


def frame_topic(site: str, asset_id: str, sensor_id: str) -> str:
    """Return the MQTT topic a sensor publishes its frames on.

    Parameters
    ----------
    site, asset_id, sensor_id : str
        Each ``[A-Za-z0-9_.:-]{1,64}``, so no MQTT wildcard or level separator can appear.

    Returns
    -------
    str
        ``"fedpm/v1/{site}/{asset_id}/{sensor_id}/frames"``.

    Raises
    ------
    FrameError
        ``bad_id`` if a part does not match the pattern.

    Examples
    --------
    >>> frame_topic("plant-a", "pump-07", "acc-01")
    'fedpm/v1/plant-a/pump-07/acc-01/frames'
    """
    for what, part in (("site", site), ("asset_id", asset_id), ("sensor_id", sensor_id)):
        _check_name(part, what, "bad_id")
    return f"fedpm/v1/{site}/{asset_id}/{sensor_id}/frames"  # topic tree v1, not frame v1


def encode_binary(frame: Frame) -> bytes:
    """Encode a frame in the binary form (see ``docs/frame-format.md``).

    Parameters
    ----------
    frame : Frame
        The frame to encode.

    Returns
    -------
    bytes
        Header, UTF-8 strings, zero padding to a 4-byte boundary, float32 LE samples
        (channel-major) and the CRC32 of everything before it.
    """
    asset, sensor, units = (s.encode() for s in (frame.asset_id, frame.sensor_id, frame.units))
    names = ",".join(frame.channel_names).encode()
    fixed = (MAGIC, FRAME_VERSION, 0, _DTYPE_FLOAT32, 0, frame.channels, len(names))
    timing = (frame.n_samples, frame.sample_rate_hz, frame.seq, frame.timestamp_ns)
    header = _HEADER.pack(*fixed, *timing, len(asset), len(sensor), len(units), 0)
    strings = asset + sensor + units + names
    prefix = header + strings + bytes(-(HEADER_SIZE + len(strings)) % 4)
    data = np.ascontiguousarray(frame.samples, dtype=_LE_F32).reshape(-1).view(np.uint8).data
    crc = zlib.crc32(data, zlib.crc32(prefix))
    return b"".join((prefix, data, _CRC.pack(crc)))


def encode_json(frame: Frame) -> bytes:
    """Encode a frame in the JSON form (see ``docs/frame-format.md``).

    Samples are written with 9 significant digits, which round-trip every float32 exactly.

    Parameters
    ----------
    frame : Frame
        The frame to encode.

    Returns
    -------
    bytes
        Compact UTF-8 JSON; ``data`` is a flat list for one channel, a list of lists otherwise.

    Raises
    ------
    FrameError
        ``too_large`` if the result would exceed :data:`MAX_JSON_BYTES` (use the binary form).
    """
    head: dict[str, object] = {
        "v": FRAME_VERSION,
        "asset_id": frame.asset_id,
        "sensor_id": frame.sensor_id,
        "seq": frame.seq,
        "ts_ns": frame.timestamp_ns,
        "fs": frame.sample_rate_hz,
        "units": frame.units,
    }
    if frame.channel_names:
        head["channels"] = list(frame.channel_names)
    rows = ["[" + ",".join(_format_row(row)) + "]" for row in frame.samples.tolist()]
    data = rows[0] if len(rows) == 1 else "[" + ",".join(rows) + "]"
    text = json.dumps(head, separators=(",", ":"), allow_nan=False)[:-1] + ',"data":' + data
    payload = (text + "}").encode()
    if len(payload) > MAX_JSON_BYTES:
        _fail("too_large", f"JSON form is {len(payload)} bytes, over {MAX_JSON_BYTES}")
    return payload


def _format_row(row: list[float]) -> list[str]:
    texts = list(map(_format_sample, row))
    if "-0" in texts:  # JSON readers parse "-0" as the integer 0 and would lose the sign
        texts = ["-0.0" if text == "-0" else text for text in texts]
    return texts


def decode(payload: bytes | bytearray | memoryview) -> Frame:
    """Decode and validate a frame in either wire form.

    A payload starting with ``{`` is read as JSON, anything else as binary. A ``bytes``
    payload is not copied: the frame's samples are a read-only view into it. A mutable
    buffer (``bytearray``, writable ``memoryview``) is copied, so changing it later is safe.

    Parameters
    ----------
    payload : bytes, bytearray or memoryview
        One MQTT message payload.

    Returns
    -------
    Frame
        The validated frame.

    Raises
    ------
    FrameError
        For any malformed or invalid payload; ``reason`` is one of
        :data:`FRAME_ERROR_REASONS`.
    TypeError
        If ``payload`` is not a C-contiguous bytes-like object.
    """
    view = memoryview(payload).cast("B")
    if len(view) == 0:
        _fail("empty", "empty payload")
    if view[0] == ord("{"):
        return _decode_json(view)
    return _decode_binary(view)


def _decode_binary(view: memoryview) -> Frame:
    size = len(view)
    if view[:4].tobytes() != MAGIC:
        if size < len(MAGIC) and MAGIC.startswith(view):
            _fail("truncated", f"payload of {size} bytes ends inside the magic")
        _fail("bad_magic", f"payload starts with {bytes(view[:4])!r}, neither {MAGIC!r} nor '{{'")
    if size <= 4:
        _fail("truncated", f"payload of {size} bytes ends before the version byte")
    if view[4] != FRAME_VERSION:
        _fail("unsupported_version", f"binary frame version {view[4]}, this reader knows 1")
    if size < HEADER_SIZE:
        _fail("truncated", f"payload of {size} bytes is shorter than the {HEADER_SIZE}-byte header")
    head = _HEADER.unpack_from(view)
    flags, dtype, reserved, channels, names_len, n, fs, seq, ts = head[2:11]
    asset_len, sensor_len, units_len, reserved2 = head[11:]
    if flags or reserved or reserved2 or dtype != _DTYPE_FLOAT32:
        _fail(
            "bad_field",
            f"flags/reserved must be 0 and dtype 1, got {flags}/{reserved}/{reserved2} and {dtype}",
        )
    if channels == 0 or n == 0:
        _fail("bad_field", f"frame declares {channels} channels of {n} samples")
    if channels > MAX_CHANNELS or n > MAX_SAMPLES_PER_FRAME:
        _fail(
            "too_large",
            f"frame declares {channels} channels of {n} samples, over "
            f"{MAX_CHANNELS} or {MAX_SAMPLES_PER_FRAME}",
        )
    strings_end = HEADER_SIZE + asset_len + sensor_len + units_len + names_len
    data_start = strings_end + -strings_end % 4
    expected = data_start + 4 * channels * n + _CRC.size
    if size != expected:
        reason = "truncated" if size < expected else "length_mismatch"
        _fail(reason, f"payload is {size} bytes, its header declares {expected}")
    (crc,) = _CRC.unpack_from(view, size - _CRC.size)
    if zlib.crc32(view[: size - _CRC.size]) != crc:
        _fail("bad_checksum", "CRC32 does not match the payload")
    if any(view[strings_end:data_start]):
        _fail("bad_field", "padding before the samples must be zero bytes")
    fields = []
    start = HEADER_SIZE
    for length, reason in (
        (asset_len, "bad_id"),
        (sensor_len, "bad_id"),
        (units_len, "bad_units"),
        (names_len, "bad_field"),
    ):
        try:
            fields.append(str(view[start : start + length], "utf-8"))
        except UnicodeDecodeError as exc:
            raise FrameError(reason, f"string at offset {start} is not UTF-8") from exc
        start += length
    asset_id, sensor_id, units, names = fields
    samples = np.frombuffer(view, dtype=_LE_F32, count=channels * n, offset=data_start)
    if not view.readonly:
        samples = samples.copy()
    channel_names = tuple(names.split(",")) if names else ()
    matrix = samples.reshape(channels, n)
    return Frame(asset_id, sensor_id, seq, ts, fs, units, matrix, channel_names)


def _reject_constant(token: str) -> NoReturn:
    _fail("non_finite", f"JSON token {token} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        _fail("bad_json", "duplicate key in a JSON object")
    return result


def _json_samples(data: object) -> npt.NDArray[np.float64]:
    if not isinstance(data, list) or not data:
        _fail("bad_field", "data must be a non-empty list of numbers or of lists of numbers")
    rows: list[Any] = data if isinstance(data[0], list) else [data]
    if len(rows) > MAX_CHANNELS:
        _fail("too_large", f"data has {len(rows)} channels, over {MAX_CHANNELS}")
    for row in rows:
        if not isinstance(row, list) or len(row) != len(rows[0]):
            _fail("bad_field", "data rows must be lists of the same length")
        if len(row) > MAX_SAMPLES_PER_FRAME:
            _fail("too_large", f"data has {len(row)} samples, over {MAX_SAMPLES_PER_FRAME}")
        if not set(map(type, row)) <= {int, float}:  # booleans, null, strings, nesting
            _fail("bad_field", "data must hold numbers only")
    try:
        return np.array(rows, dtype=np.float64)
    except OverflowError as exc:  # an integer literal beyond the float range
        raise FrameError("non_finite", "a sample overflows a float") from exc


def _decode_json(view: memoryview) -> Frame:
    if len(view) > MAX_JSON_BYTES:
        _fail("too_large", f"JSON payload of {len(view)} bytes, over {MAX_JSON_BYTES}")
    try:
        obj = json.loads(
            str(view, "utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys
        )
    except FrameError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise FrameError("bad_json", f"payload is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        _fail("bad_json", "JSON payload must be an object")
    if "v" not in obj:
        _fail("missing_field", "JSON frame has no 'v'")
    version = obj["v"]
    if type(version) is not int or version != FRAME_VERSION:
        _fail("unsupported_version", f"JSON frame version {version!r:.20}, this reader knows 1")
    if unknown := obj.keys() - _JSON_KEYS:
        _fail("bad_field", f"unknown JSON keys {sorted(unknown)!r:.200}")
    if missing := [key for key in _JSON_REQUIRED if key not in obj]:
        _fail("missing_field", f"JSON frame lacks {missing}")
    samples = _json_samples(obj["data"])
    return Frame(
        obj["asset_id"],
        obj["sensor_id"],
        obj["seq"],
        obj["ts_ns"],
        obj["fs"],
        obj["units"],
        samples,
        obj.get("channels", ()),
    )
