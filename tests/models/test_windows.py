"""Tests for models.windows: stream windowing, resampling and record slicing."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from models.errors import SignalError
from models.windows import Window, Windower, fit_length, resample, windows_from_record

FS_1K = 1_000.0  # 1 ms per sample: every timestamp is an exact integer number of ns
MS = 1_000_000  # ns
T0 = 1_700_000_000_000_000_000  # a realistic UNIX time in ns


def ramp(n: int, start: int = 0) -> npt.NDArray[np.float32]:
    """Samples equal to their index in the stream, so each window names where it came from."""
    return np.arange(start, start + n, dtype=np.float32)


def push_contiguous(
    windower: Windower, sizes: list[int], fs: float = FS_1K, t0: int = T0
) -> list[Window]:
    """Push a gap-free ramp in chunks of ``sizes``; chunk timestamps as a sensor stamps them."""
    out: list[Window] = []
    done = 0
    for size in sizes:
        out += windower.push(ramp(size, done), t0 + round(done * 1e9 / fs), fs)
        done += size
    return out


def sine(
    freq_hz: float, fs: float, seconds: float = 1.0, amplitude: float = 1.0
) -> npt.NDArray[np.float64]:
    t = np.arange(round(fs * seconds)) / fs
    return amplitude * np.sin(2 * np.pi * freq_hz * t)


def dominant_frequency(x: npt.NDArray[np.floating], fs: float) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / fs)[np.argmax(spectrum)])


def rms(x: npt.NDArray[np.floating]) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


# --- Windower --------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[250], [30, 50, 70, 100], [1] * 250, [99, 2, 99, 50]])
def test_windower_emits_the_same_windows_however_the_stream_is_chunked(sizes: list[int]) -> None:
    # Prepare
    windower = Windower(window_samples=100)

    # Execute: 250 samples in all
    windows = push_contiguous(windower, sizes)

    # Assert: two whole windows; the last 50 samples wait for more
    assert [w.start_ns for w in windows] == [T0, T0 + 100 * MS]
    for k, w in enumerate(windows):
        np.testing.assert_array_equal(w.samples, ramp(100, 100 * k))
        assert w.samples.dtype == np.float32
        assert w.sample_rate_hz == FS_1K
        assert w.end_ns == w.start_ns + 100 * MS


def test_windower_with_hop_emits_overlapping_windows() -> None:
    # Prepare
    windower = Windower(window_samples=100, hop_samples=25)

    # Execute
    windows = push_contiguous(windower, [60, 90, 40])  # 190 samples

    # Assert: windows start every 25 samples while 100 samples are available
    starts = [0, 25, 50, 75]
    assert [w.start_ns for w in windows] == [T0 + s * MS for s in starts]
    for s, w in zip(starts, windows, strict=True):
        np.testing.assert_array_equal(w.samples, ramp(100, s))


def test_windower_hop_continues_across_chunks() -> None:
    # Prepare
    windower = Windower(window_samples=100, hop_samples=25)
    first = push_contiguous(windower, [190])

    # Execute: 10 more samples complete the window starting at sample 100
    more = windower.push(ramp(10, 190), T0 + 190 * MS, FS_1K)

    # Assert
    assert [w.start_ns for w in first] == [T0 + s * MS for s in (0, 25, 50, 75)]
    assert [w.start_ns for w in more] == [T0 + 100 * MS]
    np.testing.assert_array_equal(more[0].samples, ramp(100, 100))


def test_windower_timestamps_stay_on_the_sample_grid_at_12khz() -> None:
    # Prepare: 12 kHz has a non-integer sample period (83 333.3 ns); 200 windows of 2048
    fs, n = 12_000.0, 2048
    windower = Windower(window_samples=n)
    sizes = [1000, 1024, 1300, 773] * 100  # 409 700 samples, ragged chunks

    # Execute
    windows = push_contiguous(windower, sizes, fs=fs)

    # Assert: each window starts within 1 us of its true time (one sample is 83 us)
    assert len(windows) == sum(sizes) // n
    expected = np.array([T0 + k * n * 1e9 / fs for k in range(len(windows))])
    error_ns = np.abs(np.array([w.start_ns for w in windows], dtype=np.float64) - expected)
    assert error_ns.max() < 1_000
    np.testing.assert_array_equal(windows[-1].samples, ramp(n, (len(windows) - 1) * n))


def test_windower_drops_the_partial_window_on_a_timestamp_gap() -> None:
    # Prepare: 150 samples -> one window and 50 waiting
    windower = Windower(window_samples=100)
    before = push_contiguous(windower, [150])
    resume = T0 + 10_000 * MS  # ten seconds later

    # Execute
    after_gap = windower.push(ramp(80, 1_000), resume, FS_1K)
    completed = windower.push(ramp(20, 1_080), resume + 80 * MS, FS_1K)

    # Assert: the 50 old samples never join the new ones
    assert len(before) == 1
    assert after_gap == []
    assert len(completed) == 1
    assert completed[0].start_ns == resume
    np.testing.assert_array_equal(completed[0].samples, ramp(100, 1_000))


def test_windower_keeps_the_partial_window_over_small_jitter() -> None:
    # Prepare
    windower = Windower(window_samples=100, max_gap_s=0.05)
    push_contiguous(windower, [150])

    # Execute: the next chunk is stamped 20 ms late (inside max_gap_s)
    windows = windower.push(ramp(50, 150), T0 + 150 * MS + 20 * MS, FS_1K)

    # Assert: the window runs on, timed by the sample count, not by the jittery stamp
    assert len(windows) == 1
    assert windows[0].start_ns == T0 + 100 * MS
    np.testing.assert_array_equal(windows[0].samples, ramp(100, 100))


def test_windower_drops_the_partial_window_when_time_goes_backwards() -> None:
    # Prepare
    windower = Windower(window_samples=100)
    push_contiguous(windower, [150])

    # Execute: a replayed chunk stamped one second earlier
    windows = windower.push(ramp(100, 5_000), T0 - 1_000 * MS, FS_1K)

    # Assert
    assert len(windows) == 1
    assert windows[0].start_ns == T0 - 1_000 * MS
    np.testing.assert_array_equal(windows[0].samples, ramp(100, 5_000))


def test_windower_drops_the_partial_window_on_a_sample_rate_change() -> None:
    # Prepare: 50 samples at 1 kHz wait for more
    windower = Windower(window_samples=100)
    push_contiguous(windower, [150])
    t_next = T0 + 150 * MS

    # Execute: the sensor switches to 2 kHz without a gap
    windows = windower.push(ramp(120, 7_000), t_next, 2_000.0)

    # Assert: the new window holds only 2 kHz samples and says so
    assert len(windows) == 1
    assert windows[0].sample_rate_hz == 2_000.0
    assert windows[0].start_ns == t_next
    assert windows[0].end_ns == t_next + 50 * MS
    np.testing.assert_array_equal(windows[0].samples, ramp(100, 7_000))


def test_windower_reset_forgets_the_partial_window() -> None:
    # Prepare
    windower = Windower(window_samples=100)
    push_contiguous(windower, [150])

    # Execute
    windower.reset()
    windows = windower.push(ramp(60, 150), T0 + 150 * MS, FS_1K)

    # Assert: 60 fresh samples are not a window, even though they are contiguous
    assert windows == []


@pytest.mark.parametrize(("window", "hop"), [(0, None), (-5, None), (100, 101), (100, -1), (1, 2)])
def test_windower_rejects_bad_sizes(window: int, hop: int | None) -> None:
    with pytest.raises(SignalError):
        Windower(window_samples=window, hop_samples=hop)


@pytest.mark.parametrize("fs", [0.0, -12_000.0, float("nan"), float("inf")])
def test_windower_rejects_bad_sample_rates(fs: float) -> None:
    # Prepare
    windower = Windower(window_samples=100)

    # Execute / Assert
    with pytest.raises(SignalError):
        windower.push(ramp(10), T0, fs)


# --- resample --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fs_in", "fs_out", "freq_hz"),
    [(48_000.0, 12_000.0, 1_000.0), (12_000.0, 24_000.0, 500.0), (44_100.0, 12_000.0, 2_500.0)],
)
def test_resample_keeps_a_sines_frequency_and_amplitude(
    fs_in: float, fs_out: float, freq_hz: float
) -> None:
    # Prepare: 1 s of a 0.5 g sine
    x = sine(freq_hz, fs_in, amplitude=0.5)

    # Execute
    y = resample(x, fs_in, fs_out)

    # Assert: RMS judged away from the filter's edge transients
    assert y.dtype == np.float32
    assert y.shape == (round(fs_out),)
    assert dominant_frequency(y, fs_out) == pytest.approx(freq_hz, abs=1.0)
    edge = round(0.05 * fs_out)
    assert rms(y[edge:-edge]) == pytest.approx(0.5 / np.sqrt(2), rel=1e-2)


def test_resample_removes_content_above_the_new_nyquist_frequency() -> None:
    # Prepare: a 10 kHz tone at 48 kHz would alias to 2 kHz at 12 kHz without filtering
    x = sine(10_000.0, 48_000.0) + sine(1_000.0, 48_000.0, amplitude=0.1)

    # Execute
    y = resample(x, 48_000.0, 12_000.0)

    # Assert: only the 1 kHz tone (RMS 0.0707) survives
    edge = 600
    assert dominant_frequency(y, 12_000.0) == pytest.approx(1_000.0, abs=1.0)
    assert rms(y[edge:-edge]) == pytest.approx(0.1 / np.sqrt(2), rel=0.05)


def test_resample_along_an_axis() -> None:
    # Prepare: three channels in the rows, time along axis 1, and the same transposed
    x = np.stack([sine(f, 48_000.0, seconds=0.25) for f in (500.0, 1_000.0, 2_000.0)])

    # Execute
    rows = resample(x, 48_000.0, 12_000.0, axis=1)
    cols = resample(x.T, 48_000.0, 12_000.0, axis=0)

    # Assert
    assert rows.shape == (3, 3_000)
    np.testing.assert_allclose(cols.T, rows, atol=1e-6)
    for channel, f in zip(rows, (500.0, 1_000.0, 2_000.0), strict=True):
        assert dominant_frequency(channel, 12_000.0) == pytest.approx(f, abs=4.0)


def test_resample_to_the_same_rate_changes_nothing() -> None:
    # Prepare
    x = sine(100.0, 12_000.0, seconds=0.1)

    # Execute
    y = resample(x, 12_000.0, 12_000.0)

    # Assert
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float32))


@pytest.mark.parametrize(
    ("fs_in", "fs_out"),
    [
        (12_000.0, 12_007.3),  # a drifting clock: needs a denominator far above 1000
        (12_345.678, 7.0),  # tiny irrational-ish ratio
        (0.0, 12_000.0),
        (12_000.0, -1.0),
        (float("nan"), 12_000.0),
        (12_000.0, float("inf")),
    ],
)
def test_resample_refuses_ratios_it_cannot_honour(fs_in: float, fs_out: float) -> None:
    with pytest.raises(SignalError):
        resample(np.zeros(1_000), fs_in, fs_out)


# --- fit_length and windows_from_record ------------------------------------------------------


def test_fit_length_crops_the_centre() -> None:
    # Execute
    y = fit_length(ramp(10), 4)

    # Assert
    np.testing.assert_array_equal(y, [3, 4, 5, 6])


def test_fit_length_zero_pads_at_the_end() -> None:
    # Execute
    y = fit_length(ramp(3, 1), 5)

    # Assert
    np.testing.assert_array_equal(y, [1, 2, 3, 0, 0])
    assert y.dtype == np.float32


def test_fit_length_along_axis_zero_and_unchanged_length() -> None:
    # Prepare: time along axis 0, two channels
    x = np.stack([ramp(6), -ramp(6)], axis=1)

    # Execute
    cropped = fit_length(x, 2, axis=0)
    padded = fit_length(x, 8, axis=0)
    same = fit_length(x, 6, axis=0)

    # Assert
    np.testing.assert_array_equal(cropped, [[2, -2], [3, -3]])
    assert padded.shape == (8, 2)
    np.testing.assert_array_equal(padded[6:], 0)
    np.testing.assert_array_equal(same, x)


@pytest.mark.parametrize(
    ("n", "window", "hop", "expected"),
    [
        (10_000, 2048, None, 4),  # the partial tail is dropped
        (10_000, 2048, 1024, 8),
        (2048, 2048, None, 1),
        (2047, 2048, None, 0),
        (0, 2048, 512, 0),
    ],
)
def test_windows_from_record_shapes(n: int, window: int, hop: int | None, expected: int) -> None:
    # Execute
    w = windows_from_record(ramp(n), window, hop)

    # Assert
    assert w.shape == (expected, window)
    assert w.dtype == np.float32
    step = hop or window
    for k in range(expected):
        np.testing.assert_array_equal(w[k], ramp(window, k * step))


def test_windows_from_record_flattens_its_input() -> None:
    # Execute: a (1, n) record, as a single-channel array often arrives
    w = windows_from_record(ramp(300).reshape(1, -1), 100)

    # Assert
    assert w.shape == (3, 100)


@pytest.mark.parametrize(("window", "hop"), [(0, None), (-1, None), (100, -5)])
def test_windows_from_record_rejects_bad_sizes(window: int, hop: int | None) -> None:
    with pytest.raises(SignalError):
        windows_from_record(ramp(1_000), window, hop)


def test_windower_resumes_from_a_saved_partial_window() -> None:
    # Prepare
    x = np.arange(3000, dtype=np.float32)
    first = Windower(1024)
    first.push(x[:1500], 0, 1000.0)
    saved = first.pending()
    assert saved is not None

    # Execute
    second = Windower(1024)
    second.restore(saved)
    windows = second.push(x[1500:], 1_500_000_000, 1000.0)

    # Assert
    assert [w.start_ns for w in windows] == [1_024_000_000]
    np.testing.assert_array_equal(windows[0].samples, x[1024:2048])
    assert Windower(1024).pending() is None
    with pytest.raises(SignalError):
        Windower(4).restore(saved)
