"""Labelled vibration recordings on disk: a manifest (one row per record) and its files.

A manifest is a TSV or CSV table with at least the columns ``file``, ``fault_type``,
``sample_rate_hz`` and ``channels`` (comma-separated channel names, e.g. ``de,fe``); ``rpm``,
``rpm_in_file`` or ``rpm_nominal`` give the shaft speed (the first non-empty one, in that
order), an optional ``timestamp`` (ISO 8601 or a number, e.g. UNIX seconds) orders the records,
and every other column is kept as text in :attr:`RecordInfo.metadata`. Relative file paths
resolve against the manifest's folder. The CWRU Bearing Data Center folder in
``shared/datasets`` is such a manifest.

Record files are read by their extension:

``.npz``
    one array per channel, named by the channel.
``.mat``
    an original CWRU MATLAB file (``X105_DE_time``, ``X105_FE_time``, ``X105_BA_time``,
    ``X105RPM``; channels ``de``, ``fe``, ``ba``). Some files carry variables of more than one
    record number: the one matching the manifest's ``official_file_no`` (or the number that ends
    the file name) is taken. A MATLAB file whose variables are named by channel also works.
``.csv``
    one column per channel, the header naming the channels.
``.wav``
    channels ``ch0``, ``ch1``...; integer PCM is scaled to [-1, 1], float samples are kept; both
    are then multiplied by the optional ``scale_g`` column (g at full scale, default 1).

Samples come back as float32 in g. No network I/O happens here.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from models.errors import DatasetError, SignalError
from models.windows import resample

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

REQUIRED_COLUMNS = ("file", "fault_type", "sample_rate_hz", "channels")
RPM_COLUMNS = ("rpm", "rpm_in_file", "rpm_nominal")  # the first non-empty one wins
TIMESTAMP_COLUMN = "timestamp"
_TYPED_COLUMNS = frozenset({*REQUIRED_COLUMNS, TIMESTAMP_COLUMN})
_CHANNEL_SPLIT = re.compile(r"[\s,;|]+")
_CWRU_SIGNAL = re.compile(r"^X(\d+)_(DE|FE|BA)_time$")
_CWRU_RPM = re.compile(r"^X(\d+)RPM$")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class RecordInfo:
    """One manifest row: where a record is and what it is.

    Parameters
    ----------
    path
        Absolute path of the record file.
    fault_type
        Label, e.g. ``normal``, ``inner_race``.
    sample_rate_hz
        Sampling rate of the file, in Hz.
    rpm
        Shaft speed in rev/min, or ``None`` when unknown.
    channels
        Channel names the record holds (``de``, ``fe``...).
    metadata
        Every other manifest column, as text (``motor_load_hp``, ``fault_diameter_in``...).
    timestamp
        The ``timestamp`` column as written, or ``None``.
    """

    path: Path
    fault_type: str
    sample_rate_hz: float
    rpm: float | None
    channels: tuple[str, ...]
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timestamp: str | None = None

    @property
    def name(self) -> str:
        """The record's file name without extension, e.g. ``normal_0_97``."""
        return self.path.stem


@dataclass(frozen=True)
class Record:
    """A record's samples: ``signals`` maps channel name to float32 samples in g."""

    info: RecordInfo
    sample_rate_hz: float
    signals: Mapping[str, FloatArray]

    @property
    def n_samples(self) -> int:
        """Samples per channel."""
        return len(next(iter(self.signals.values()))) if self.signals else 0


# --- Manifest -------------------------------------------------------------------------------


def _delimiter(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in {".tsv", ".tab"}:
        return "\t"
    if suffix == ".csv":
        return ","
    first = text.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(first, delimiters="\t,;").delimiter
    except csv.Error as exc:
        raise DatasetError(f"{path}: cannot tell whether it is TSV or CSV") from exc


def _number(where: str, column: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"{where}: {column} {value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise DatasetError(f"{where}: {column} must be positive and finite, got {value!r}")
    return number


def _timestamp_key(where: str, value: str) -> float:
    """Seconds since the UNIX epoch of a numeric or ISO 8601 timestamp (naive means UTC)."""
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise DatasetError(f"{where}: timestamp {value!r} is not finite")
        return number
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise DatasetError(
            f"{where}: timestamp {value!r} is neither ISO 8601 nor a number"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _row_info(manifest: Path, line: int, row: Mapping[str, str]) -> tuple[RecordInfo, float | None]:
    where = f"{manifest.name} line {line}"
    name = row["file"]
    if not name:
        raise DatasetError(f"{where}: empty 'file'")
    where = f"{where} ({name})"
    path = Path(name).expanduser()
    path = path if path.is_absolute() else manifest.parent / path
    if not path.is_file():
        raise DatasetError(f"{where}: file not found at {path}")
    fault_type = row["fault_type"]
    if not fault_type:
        raise DatasetError(f"{where}: empty 'fault_type'")
    channels = tuple(c for c in _CHANNEL_SPLIT.split(row["channels"]) if c)
    if not channels or len(set(channels)) != len(channels):
        raise DatasetError(f"{where}: channels {row['channels']!r} must be distinct names")
    rpm_column = next((c for c in RPM_COLUMNS if row.get(c)), None)
    rpm = None if rpm_column is None else _number(where, rpm_column, row[rpm_column])
    stamp = row.get(TIMESTAMP_COLUMN) or None
    info = RecordInfo(
        path=path.resolve(),
        fault_type=fault_type,
        sample_rate_hz=_number(where, "sample_rate_hz", row["sample_rate_hz"]),
        rpm=rpm,
        channels=channels,
        metadata=MappingProxyType({k: v for k, v in row.items() if k not in _TYPED_COLUMNS}),
        timestamp=stamp,
    )
    return info, None if stamp is None else _timestamp_key(where, stamp)


def load_manifest(path: str | Path) -> list[RecordInfo]:
    """Read a manifest (TSV or CSV) into one :class:`RecordInfo` per row.

    Parameters
    ----------
    path
        The manifest. ``.tsv``/``.tab`` is tab-separated, ``.csv`` comma-separated; any other
        name is sniffed from the header line (tab, comma or semicolon).

    Returns
    -------
    list of RecordInfo
        In file order, or by ``timestamp`` when that column exists (rows without one last, in
        file order).

    Raises
    ------
    DatasetError
        Unreadable manifest, a missing required column, a row with a bad number or timestamp,
        or a record file that does not exist; the message names the manifest and its line.
    """
    manifest = Path(path).expanduser().resolve()
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read manifest {manifest}: {exc}") from exc
    reader = csv.reader(text.splitlines(), delimiter=_delimiter(manifest, text))
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            f"{manifest.name} line 1: missing column(s) {', '.join(missing)} "
            f"(has: {', '.join(h for h in header if h) or 'nothing'})"
        )
    if len(set(header)) != len(header):
        raise DatasetError(f"{manifest.name} line 1: repeated column names in {header}")
    entries: list[tuple[float | None, int, RecordInfo]] = []
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        if len(cells) != len(header):
            raise DatasetError(
                f"{manifest.name} line {line}: {len(cells)} fields, the header has {len(header)}"
            )
        row = {k: v.strip() for k, v in zip(header, cells, strict=True)}
        info, key = _row_info(manifest, line, row)
        entries.append((key, len(entries), info))
    if TIMESTAMP_COLUMN in header:
        entries.sort(key=lambda e: (e[0] is None, e[0] or 0.0, e[1]))
    return [info for _, _, info in entries]


# --- Record readers -------------------------------------------------------------------------

_Signals = dict[str, FloatArray]
_T = TypeVar("_T")


def _as_channel(where: str, name: str, array: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(array)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.number):
        raise DatasetError(f"{where}: channel {name!r} is not a 1-D numeric array")
    return arr.astype(np.float32)


def _pick(where: str, available: Mapping[str, _T], wanted: Sequence[str]) -> dict[str, _T]:
    absent = [c for c in wanted if c not in available]
    if absent:
        raise DatasetError(
            f"{where}: no channel(s) {', '.join(absent)} (has: {', '.join(available) or 'none'})"
        )
    return {c: available[c] for c in wanted}


def _read_npz(info: RecordInfo, wanted: Sequence[str]) -> tuple[_Signals, float | None]:
    with info.path.open("rb") as file, np.load(file, allow_pickle=False) as data:
        present = {name: data[name] for name in data.files if name in wanted}
        names = list(data.files)
    absent = [c for c in wanted if c not in present]
    if absent:
        raise DatasetError(f"{info.path}: no array(s) {', '.join(absent)} (has: {names})")
    return {c: _as_channel(str(info.path), c, present[c]) for c in wanted}, None


def _record_number(info: RecordInfo) -> int | None:
    official = info.metadata.get("official_file_no", "")
    if official.isdigit():
        return int(official)
    match = _TRAILING_NUMBER.search(info.path.stem)
    return int(match.group(1)) if match else None


def _read_mat(info: RecordInfo, wanted: Sequence[str]) -> tuple[_Signals, float | None]:
    from scipy import io as sio  # lazy: scipy costs a second of start-up

    try:
        variables = sio.loadmat(str(info.path))
    except (NotImplementedError, ValueError, OSError, TypeError) as exc:
        raise DatasetError(f"{info.path}: not a readable MATLAB (v4-v7.2) file: {exc}") from exc
    by_number: dict[int, dict[str, npt.ArrayLike]] = {}
    rpms: dict[int, npt.ArrayLike] = {}
    for key, value in variables.items():
        if m := _CWRU_SIGNAL.match(key):
            by_number.setdefault(int(m.group(1)), {})[m.group(2).lower()] = value
        elif m := _CWRU_RPM.match(key):
            rpms[int(m.group(1))] = value
    if not by_number:  # not a CWRU file: variables named by channel
        named = {k: v for k, v in variables.items() if not k.startswith("__")}
        picked = _pick(str(info.path), named, wanted)
        return {c: _as_channel(str(info.path), c, v) for c, v in picked.items()}, None
    number = _record_number(info)
    if number not in by_number:
        if len(by_number) != 1:
            found = ", ".join(f"X{n:03d}" for n in sorted(by_number))
            raise DatasetError(
                f"{info.path}: holds records {found}, none is record {number}; "
                "set official_file_no in the manifest"
            )
        logger.debug("%s: record %s stored as X%03d", info.path, number, next(iter(by_number)))
        number = next(iter(by_number))
    assert number is not None  # narrowed by the membership test above
    channels = _pick(str(info.path), by_number[number], wanted)
    signals = {c: _as_channel(str(info.path), c, v) for c, v in channels.items()}
    rpm_raw = rpms.get(number, next(iter(rpms.values())) if len(rpms) == 1 else None)
    rpm = None if rpm_raw is None else float(np.asarray(rpm_raw, dtype=np.float64).reshape(-1)[0])
    return signals, rpm if rpm is not None and math.isfinite(rpm) and rpm > 0 else None


def _read_csv(info: RecordInfo, wanted: Sequence[str]) -> tuple[_Signals, float | None]:
    where = str(info.path)
    with info.path.open(encoding="utf-8-sig", newline="") as handle:
        first = handle.readline()
    try:
        delimiter = csv.Sniffer().sniff(first, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","  # a single column has no delimiter to sniff
    header = [h.strip() for h in next(csv.reader([first], delimiter=delimiter), [])]
    columns = [header.index(c) for c in _pick(where, dict.fromkeys(header), wanted)]
    try:
        table = np.loadtxt(
            info.path,
            delimiter=delimiter,
            skiprows=1,
            usecols=columns,
            ndmin=2,
            dtype=np.float64,
            encoding="utf-8-sig",
        )
    except ValueError as exc:
        raise DatasetError(f"{where}: bad sample ({exc})") from exc
    return {c: table[:, i].astype(np.float32) for i, c in enumerate(wanted)}, None


def _read_wav(info: RecordInfo, wanted: Sequence[str]) -> tuple[_Signals, float | None]:
    from scipy.io import wavfile  # lazy, as above

    where = str(info.path)
    try:
        with warnings.catch_warnings():  # unknown metadata chunks (LIST, cue...) do not matter
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            rate, data = wavfile.read(str(info.path))
    except ValueError as exc:
        raise DatasetError(f"{where}: not a readable WAV file: {exc}") from exc
    if abs(rate - info.sample_rate_hz) > 1e-6 * info.sample_rate_hz:
        raise DatasetError(
            f"{where}: the file is sampled at {rate} Hz, the manifest says {info.sample_rate_hz:g}"
        )
    samples = np.asarray(data)
    if samples.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        scaled = (samples.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(samples.dtype, np.integer):
        scaled = samples.astype(np.float64) / float(-np.iinfo(samples.dtype).min)
    else:
        scaled = samples.astype(np.float64)
    scale_text = info.metadata.get("scale_g", "")
    scale = _number(where, "scale_g", scale_text) if scale_text else 1.0
    columns = scaled.reshape(len(scaled), -1) * scale
    available = {f"ch{i}": columns[:, i].astype(np.float32) for i in range(columns.shape[1])}
    return _pick(where, available, wanted), None


_READERS: dict[str, Callable[[RecordInfo, Sequence[str]], tuple[_Signals, float | None]]] = {
    ".npz": _read_npz,
    ".mat": _read_mat,
    ".csv": _read_csv,
    ".wav": _read_wav,
}


def read_record(
    info: RecordInfo, *, channels: Sequence[str] | None = None, target_fs: float | None = None
) -> Record:
    """Load a record's samples, optionally only some channels and resampled.

    Parameters
    ----------
    info
        The manifest row.
    channels
        Channels to load (default: all of ``info.channels``), in this order.
    target_fs
        Resample every channel to this rate in Hz (polyphase, anti-aliased); ``None`` keeps
        the file's rate.

    Returns
    -------
    Record
        float32 samples in g per channel, all of one length, at ``target_fs`` or the file's rate.
        A CWRU ``.mat`` file's RPM variable fills ``info.rpm`` when the manifest had none.

    Raises
    ------
    DatasetError
        Unknown format, unreadable file, a channel the file lacks, channels of unequal length,
        non-finite samples, or a rate that cannot be resampled.
    """
    wanted = tuple(info.channels if channels is None else channels)
    if not wanted or len(set(wanted)) != len(wanted):
        raise DatasetError(f"{info.path}: need distinct channel names, got {wanted}")
    reader = _READERS.get(info.path.suffix.lower())
    if reader is None:
        raise DatasetError(
            f"{info.path}: unsupported format {info.path.suffix!r} (use {', '.join(_READERS)})"
        )
    try:
        signals, rpm = reader(info, wanted)
    except OSError as exc:
        raise DatasetError(f"{info.path}: cannot read: {exc}") from exc
    lengths = {c: len(x) for c, x in signals.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"{info.path}: channels differ in length: {lengths}")
    for name, x in signals.items():
        if not np.isfinite(x).all():
            raise DatasetError(f"{info.path}: channel {name!r} holds NaN or Inf samples")
    if info.rpm is None and rpm is not None:
        info = replace(info, rpm=rpm)
    fs = info.sample_rate_hz if target_fs is None else float(target_fs)
    if fs != info.sample_rate_hz:
        try:
            signals = {c: resample(x, info.sample_rate_hz, fs) for c, x in signals.items()}
        except SignalError as exc:
            raise DatasetError(f"{info.path}: {exc}") from exc
    return Record(info=info, sample_rate_hz=fs, signals=MappingProxyType(signals))
