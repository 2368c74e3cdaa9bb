"""Cut continuous sample streams into fixed-length windows, and resample them for a model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from models.errors import SignalError

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Window:
    """One window of one channel."""

    start_ns: int
    sample_rate_hz: float
    samples: FloatArray  # (n,)

    @property
    def end_ns(self) -> int:
        """UNIX ns just after the last sample."""
        return self.start_ns + round(len(self.samples) * 1e9 / self.sample_rate_hz)


@dataclass
class Windower:
    """Accumulate one channel's samples and emit non-overlapping (or hopped) windows.

    A discontinuity (``reset``, a sample-rate change, or a timestamp jump larger than
    ``max_gap_s``) drops the partial window so no window ever spans missing data.

    The windower never writes into its buffer, so a read-only chunk (a decoded frame's
    samples, a view into the message) is kept without a copy until a window completes, and
    :meth:`pending` hands it out as it is; writable chunks are copied. Emitted windows own
    their samples.
    """

    window_samples: int
    hop_samples: int | None = None
    max_gap_s: float = 0.05
    _buffer: FloatArray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    _buffer_start_ns: int = 0
    _fs: float = 0.0

    def __post_init__(self) -> None:
        if self.window_samples < 1:
            raise SignalError("window_samples must be >= 1")
        hop = self.window_samples if self.hop_samples is None else self.hop_samples
        if not 1 <= hop <= self.window_samples:
            raise SignalError("hop_samples must be in [1, window_samples]")
        self.hop_samples = hop

    def reset(self) -> None:
        """Forget the partial window."""
        self._buffer = np.zeros(0, np.float32)

    def pending(self) -> Window | None:
        """The partial window collected so far (shorter than a window), or ``None``."""
        if not len(self._buffer):
            return None
        # A read-only buffer (a decoded frame's samples) cannot change under the caller, and
        # the windower never writes into its buffer, so it is handed out as it is.
        buffer = self._buffer
        return Window(
            self._buffer_start_ns, self._fs, buffer if not buffer.flags.writeable else buffer.copy()
        )

    def restore(self, partial: Window) -> None:
        """Continue from a partial window saved with :meth:`pending` (e.g. before a restart)."""
        if len(partial.samples) >= self.window_samples:
            raise SignalError("a partial window must be shorter than a window")
        self._buffer = np.asarray(partial.samples, dtype=np.float32).reshape(-1).copy()
        self._buffer_start_ns, self._fs = partial.start_ns, partial.sample_rate_hz

    def push(self, samples: npt.ArrayLike, start_ns: int, sample_rate_hz: float) -> list[Window]:
        """Add a chunk that starts at ``start_ns`` and return the windows it completes."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not math.isfinite(sample_rate_hz) or sample_rate_hz <= 0:
            raise SignalError(f"sample rate must be positive, got {sample_rate_hz}")
        if len(self._buffer):
            expected = self._buffer_start_ns + round(len(self._buffer) * 1e9 / self._fs)
            if sample_rate_hz != self._fs or abs(start_ns - expected) > self.max_gap_s * 1e9:
                self.reset()
        if not len(self._buffer):
            self._buffer_start_ns, self._fs = start_ns, sample_rate_hz
            # The buffer is never written in place, so a read-only chunk (a decoded frame's
            # samples) is kept as it is; a writable one is copied, as the caller may reuse it.
            self._buffer = x.copy() if x.flags.writeable else x
        else:
            self._buffer = np.concatenate([self._buffer, x])
        out = []
        hop = self.hop_samples or self.window_samples
        size = self.window_samples
        if len(self._buffer) == size and self._buffer.flags.owndata:
            # Exactly one window in a buffer of its own (the common case: it was concatenated
            # or copied just above): the window takes the array instead of a copy of it.
            out.append(Window(self._buffer_start_ns, self._fs, self._buffer))
            self._buffer_start_ns += round(hop * 1e9 / self._fs)
            self._buffer = self._buffer[hop:].copy()
            return out
        consumed = 0
        while len(self._buffer) - consumed >= size:
            seg = self._buffer[consumed : consumed + size].copy()
            t = self._buffer_start_ns + round(consumed * 1e9 / self._fs)
            out.append(Window(t, self._fs, seg))
            consumed += hop
        if consumed:
            self._buffer_start_ns += round(consumed * 1e9 / self._fs)
            self._buffer = self._buffer[consumed:]
        return out


def resample(
    x: npt.ArrayLike, fs_in: float, fs_out: float, axis: int = -1, max_denominator: int = 1000
) -> FloatArray:
    """Resample ``x`` from ``fs_in`` to ``fs_out`` Hz with a polyphase anti-aliasing filter.

    The rate ratio is approximated by a fraction with denominator <= ``max_denominator``; a
    ratio that cannot be matched within 0.01 % raises :class:`SignalError`.
    """
    arr = np.asarray(x, dtype=np.float32)
    if not (np.isfinite(fs_in) and np.isfinite(fs_out) and fs_in > 0 and fs_out > 0):
        raise SignalError(f"sample rates must be positive and finite: {fs_in} -> {fs_out}")
    if fs_in == fs_out:
        return arr
    ratio = Fraction(fs_out / fs_in).limit_denominator(max_denominator)
    if abs(float(ratio) - fs_out / fs_in) > 1e-4 * fs_out / fs_in:
        raise SignalError(f"cannot resample {fs_in} Hz to {fs_out} Hz with a rational ratio")
    from scipy import signal  # lazy: keeps the Flower ClientApp's start-up light

    y = signal.resample_poly(arr, ratio.numerator, ratio.denominator, axis=axis)
    return np.asarray(y, dtype=np.float32)


def fit_length(x: FloatArray, n: int, axis: int = -1) -> FloatArray:
    """Crop (centre) or zero-pad ``x`` along ``axis`` to exactly ``n`` samples."""
    have = x.shape[axis]
    if have == n:
        return x
    if have > n:
        start = (have - n) // 2
        return np.take(x, np.arange(start, start + n), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n - have)
    return np.pad(x, pad)


def windows_from_record(
    x: npt.ArrayLike, window_samples: int, hop_samples: int | None = None
) -> FloatArray:
    """Slice a 1-D record into windows shaped (n_windows, window_samples)."""
    arr = np.asarray(x, dtype=np.float32).reshape(-1)
    hop = window_samples if hop_samples is None else hop_samples
    if window_samples < 1 or hop < 1:
        raise SignalError("window and hop must be >= 1")
    if len(arr) < window_samples:
        return np.zeros((0, window_samples), np.float32)
    starts = np.arange(0, len(arr) - window_samples + 1, hop)
    return np.stack([arr[s : s + window_samples] for s in starts])
