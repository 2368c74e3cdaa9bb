"""Tests for models.datasets: manifests, the npz/mat/csv/wav readers, and resampling on load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy.io import savemat, wavfile

from models.datasets import RecordInfo, load_manifest, read_record
from models.errors import DatasetError, FedPMModelsError

FloatArray = npt.NDArray[np.float32]
HEADER = "file\tfault_type\tsample_rate_hz\tchannels"


def sine(n: int, fs: float, freq: float, amplitude: float = 1.0) -> FloatArray:
    t = np.arange(n) / fs
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_manifest(folder: Path, lines: list[str], name: str = "MANIFEST.tsv") -> Path:
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def touch_npz(folder: Path, name: str, n: int = 64, **arrays: FloatArray) -> Path:
    data = arrays or {"de": np.zeros(n, np.float32)}
    np.savez(folder / name, **data)  # type: ignore[arg-type]
    return folder / name


def info_for(path: Path, channels: tuple[str, ...], fs: float, **metadata: str) -> RecordInfo:
    return RecordInfo(path, "normal", fs, None, channels, metadata)


# --- load_manifest ---------------------------------------------------------------------------


def test_tsv_manifest_gives_typed_rows_and_keeps_other_columns(tmp_path: Path) -> None:
    # Prepare
    touch_npz(tmp_path, "a.npz")
    touch_npz(tmp_path, "b.npz")
    manifest = write_manifest(
        tmp_path,
        [
            f"{HEADER}\trpm_nominal\trpm_in_file\tmotor_load_hp",
            "a.npz\tinner_race\t12000\tde,fe\t1797\t1796.0\t0",
            "b.npz\tnormal\t48000\tde\t1750\t\t2",
        ],
    )

    # Execute
    a, b = load_manifest(manifest)

    # Assert
    assert a.path == (tmp_path / "a.npz").resolve()
    assert (a.fault_type, a.sample_rate_hz, a.channels) == ("inner_race", 12_000.0, ("de", "fe"))
    assert a.rpm == 1796.0  # the measured speed wins over the nominal one
    assert b.rpm == 1750.0  # no measured speed: nominal
    assert dict(a.metadata) == {
        "rpm_nominal": "1797",
        "rpm_in_file": "1796.0",
        "motor_load_hp": "0",
    }
    assert a.timestamp is None
    assert a.name == "a"


def test_rpm_is_none_without_rpm_columns_or_values(tmp_path: Path) -> None:
    # Prepare
    touch_npz(tmp_path, "a.npz")
    plain = write_manifest(tmp_path, [HEADER, "a.npz\tball\t12000\tde"], "plain.tsv")
    empty = write_manifest(
        tmp_path, [f"{HEADER}\trpm_in_file", "a.npz\tball\t12000\tde\t"], "e.tsv"
    )

    # Execute
    infos = load_manifest(plain) + load_manifest(empty)

    # Assert
    assert [i.rpm for i in infos] == [None, None]


def test_csv_manifest_with_quoted_channels_and_absolute_path(tmp_path: Path) -> None:
    # Prepare: the record lives elsewhere and is named by an absolute path
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    record = touch_npz(data_dir, "r.npz")
    manifest = write_manifest(
        tmp_path / "data",
        ["file,fault_type,sample_rate_hz,channels", f'{record},outer_race,12000,"de,fe"'],
        "list.csv",
    )

    # Execute
    (info,) = load_manifest(manifest)

    # Assert
    assert info.path == record.resolve()
    assert info.channels == ("de", "fe")


def test_manifest_without_known_extension_is_sniffed(tmp_path: Path) -> None:
    # Prepare
    touch_npz(tmp_path, "r.npz")
    manifest = write_manifest(
        tmp_path, ["file;fault_type;sample_rate_hz;channels", "r.npz;ball;12000;de"], "manifest"
    )

    # Execute
    (info,) = load_manifest(manifest)

    # Assert
    assert (info.fault_type, info.channels) == ("ball", ("de",))


def test_relative_paths_resolve_against_the_manifest_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: run from another folder
    (tmp_path / "set" / "sub").mkdir(parents=True)
    touch_npz(tmp_path / "set" / "sub", "r.npz")
    manifest = write_manifest(tmp_path / "set", [HEADER, "sub/r.npz\tnormal\t12000\tde"])
    monkeypatch.chdir(tmp_path)

    # Execute
    (info,) = load_manifest(manifest)

    # Assert
    assert info.path == (tmp_path / "set" / "sub" / "r.npz").resolve()


def test_timestamp_column_orders_records_iso_and_numeric(tmp_path: Path) -> None:
    # Prepare: rows out of order, mixed offsets, one numeric, one without a timestamp
    for name in "abcde":
        touch_npz(tmp_path, f"{name}.npz")
    manifest = write_manifest(
        tmp_path,
        [
            f"{HEADER}\ttimestamp",
            "a.npz\tnormal\t12000\tde\t2026-01-01T12:00:00+00:00",
            "b.npz\tnormal\t12000\tde\t",
            "c.npz\tnormal\t12000\tde\t2026-01-01T10:00:00+01:00",  # 09:00 UTC
            "d.npz\tnormal\t12000\tde\t1767258000",  # 2026-01-01T09:00:00Z + 1 h = 10:00 UTC
            "e.npz\tnormal\t12000\tde\t2026-01-01T08:00:00",  # naive: taken as UTC
        ],
    )

    # Execute
    infos = load_manifest(manifest)

    # Assert: by time, the undated row last
    assert [i.name for i in infos] == ["e", "c", "d", "a", "b"]
    assert infos[0].timestamp == "2026-01-01T08:00:00"
    assert infos[-1].timestamp is None


def test_manifest_without_timestamps_keeps_file_order(tmp_path: Path) -> None:
    # Prepare
    for name in "zya":
        touch_npz(tmp_path, f"{name}.npz")
    manifest = write_manifest(tmp_path, [HEADER, *(f"{n}.npz\tnormal\t12000\tde" for n in "zya")])

    # Execute
    infos = load_manifest(manifest)

    # Assert
    assert [i.name for i in infos] == ["z", "y", "a"]


def test_blank_and_comment_lines_are_skipped_and_lines_counted(tmp_path: Path) -> None:
    # Prepare: the bad row is on line 5 of the file
    touch_npz(tmp_path, "a.npz")
    manifest = write_manifest(
        tmp_path, [HEADER, "", "# a comment", "a.npz\tnormal\t12000\tde", "a.npz\tnormal\tx\tde"]
    )

    # Execute / Assert
    with pytest.raises(DatasetError, match=r"MANIFEST\.tsv line 5 \(a\.npz\): sample_rate_hz 'x'"):
        load_manifest(manifest)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a.npz\tnormal\tfast\tde\t", r"line 2 \(a\.npz\): sample_rate_hz 'fast' is not a number"),
        ("a.npz\tnormal\t-5\tde\t", r"line 2 \(a\.npz\): sample_rate_hz must be positive"),
        ("a.npz\tnormal\tnan\tde\t", r"line 2 \(a\.npz\): sample_rate_hz must be positive"),
        ("a.npz\tnormal\t12000\tde\tabc", r"line 2 \(a\.npz\): rpm_in_file 'abc' is not a number"),
        ("gone.npz\tnormal\t12000\tde\t", r"line 2 \(gone\.npz\): file not found at .*gone\.npz"),
        ("\tnormal\t12000\tde\t", r"line 2: empty 'file'"),
        ("a.npz\t\t12000\tde\t", r"line 2 \(a\.npz\): empty 'fault_type'"),
        ("a.npz\tnormal\t12000\t\t", r"line 2 \(a\.npz\): channels '' must be distinct"),
        ("a.npz\tnormal\t12000\tde,de\t", r"line 2 \(a\.npz\): channels 'de,de' must be distinct"),
        ("a.npz\tnormal\t12000", r"line 2: 3 fields, the header has 5"),
    ],
)
def test_bad_rows_name_the_manifest_line_and_file(tmp_path: Path, row: str, message: str) -> None:
    # Prepare
    touch_npz(tmp_path, "a.npz")
    manifest = write_manifest(tmp_path, [f"{HEADER}\trpm_in_file", row])

    # Execute / Assert
    with pytest.raises(DatasetError, match=message):
        load_manifest(manifest)


@pytest.mark.parametrize(
    ("stamp", "message"), [("later", "is neither ISO 8601 nor a number"), ("nan", "is not finite")]
)
def test_bad_timestamp_names_the_line(tmp_path: Path, stamp: str, message: str) -> None:
    # Prepare
    touch_npz(tmp_path, "a.npz")
    manifest = write_manifest(
        tmp_path, [f"{HEADER}\ttimestamp", f"a.npz\tnormal\t12000\tde\t{stamp}"]
    )

    # Execute / Assert
    with pytest.raises(DatasetError, match=rf"line 2 \(a\.npz\): timestamp '{stamp}' {message}"):
        load_manifest(manifest)


def test_missing_columns_are_listed(tmp_path: Path) -> None:
    # Prepare
    manifest = write_manifest(tmp_path, ["file\tlabel\tfs", "a.npz\tnormal\t12000"])

    # Execute / Assert
    with pytest.raises(
        DatasetError,
        match=r"MANIFEST\.tsv line 1: missing column\(s\) fault_type, sample_rate_hz, channels "
        r"\(has: file, label, fs\)",
    ):
        load_manifest(manifest)


def test_unreadable_manifest_is_a_dataset_error(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(DatasetError, match="cannot read manifest"):
        load_manifest(tmp_path / "nope.tsv")
    assert issubclass(DatasetError, FedPMModelsError)


# --- Readers ---------------------------------------------------------------------------------


def test_npz_reader_selects_channels_in_order(tmp_path: Path) -> None:
    # Prepare
    de, fe = sine(100, 1000.0, 10.0), sine(100, 1000.0, 20.0)
    path = touch_npz(tmp_path, "r.npz", de=de, fe=fe)
    info = info_for(path, ("de", "fe"), 1000.0)

    # Execute
    both = read_record(info)
    fe_only = read_record(info, channels=["fe"])

    # Assert
    assert list(both.signals) == ["de", "fe"]
    np.testing.assert_array_equal(both.signals["fe"], fe)
    assert list(fe_only.signals) == ["fe"]
    assert both.signals["de"].dtype == np.float32
    assert (both.sample_rate_hz, both.n_samples) == (1000.0, 100)


def test_npz_reader_refuses_missing_channel_and_unequal_lengths(tmp_path: Path) -> None:
    # Prepare
    short = touch_npz(tmp_path, "s.npz", de=np.zeros(10, np.float32), fe=np.zeros(9, np.float32))

    # Execute / Assert
    with pytest.raises(DatasetError, match=r"no array\(s\) ba"):
        read_record(info_for(short, ("de", "ba"), 1000.0))
    with pytest.raises(DatasetError, match="channels differ in length"):
        read_record(info_for(short, ("de", "fe"), 1000.0))


def test_non_finite_samples_are_refused(tmp_path: Path) -> None:
    # Prepare
    path = touch_npz(tmp_path, "n.npz", de=np.array([0.0, np.nan, 1.0], np.float32))

    # Execute / Assert
    with pytest.raises(DatasetError, match="NaN or Inf"):
        read_record(info_for(path, ("de",), 1000.0))


def test_resampling_on_load_keeps_frequency_and_amplitude(tmp_path: Path) -> None:
    # Prepare: 1 s of a 1 kHz sine at 48 kHz, amplitude 0.5 g
    path = touch_npz(tmp_path, "r.npz", de=sine(48_000, 48_000.0, 1000.0, 0.5))

    # Execute
    record = read_record(info_for(path, ("de",), 48_000.0), target_fs=12_000.0)

    # Assert
    x = record.signals["de"][1000:-1000]  # away from the filter's edges
    spectrum = np.abs(np.fft.rfft(record.signals["de"]))
    assert (record.sample_rate_hz, record.n_samples) == (12_000.0, 12_000)
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over 1 s
    assert np.sqrt(np.mean(x**2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-2)


def test_unresamplable_rate_is_a_dataset_error(tmp_path: Path) -> None:
    # Prepare
    path = touch_npz(tmp_path, "r.npz", de=np.zeros(100, np.float32))

    # Execute / Assert
    with pytest.raises(DatasetError, match=r"r\.npz: cannot resample"):
        read_record(info_for(path, ("de",), 12_000.0), target_fs=12_000.0 / 1999)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "r.parquet"
    path.write_bytes(b"PAR1")

    # Execute / Assert
    with pytest.raises(DatasetError, match=r"unsupported format '\.parquet'"):
        read_record(info_for(path, ("de",), 12_000.0))


def test_csv_reader_takes_columns_by_header(tmp_path: Path) -> None:
    # Prepare: columns in another order than requested, plus an unused one
    de, fe = sine(500, 5000.0, 50.0, 2.0), sine(500, 5000.0, 70.0, 0.3)
    path = tmp_path / "r.csv"
    rows = [
        "time,fe,de",
        *(
            f"{i / 5000},{float(f)!r},{float(d)!r}"
            for i, (d, f) in enumerate(zip(de, fe, strict=True))
        ),
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")

    # Execute
    record = read_record(info_for(path, ("de", "fe"), 5000.0))

    # Assert
    assert list(record.signals) == ["de", "fe"]
    np.testing.assert_allclose(record.signals["de"], de, rtol=1e-6)
    np.testing.assert_allclose(record.signals["fe"], fe, rtol=1e-6)


def test_single_column_csv_and_its_errors(tmp_path: Path) -> None:
    # Prepare
    good = tmp_path / "one.csv"
    good.write_text("de\n0.5\n-0.25\n", encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text("de\n0.5\noops\n", encoding="utf-8")

    # Execute
    record = read_record(info_for(good, ("de",), 100.0))

    # Assert
    np.testing.assert_array_equal(record.signals["de"], np.array([0.5, -0.25], np.float32))
    with pytest.raises(DatasetError, match=r"bad\.csv: bad sample"):
        read_record(info_for(bad, ("de",), 100.0))
    with pytest.raises(DatasetError, match=r"no channel\(s\) fe \(has: de\)"):
        read_record(info_for(good, ("fe",), 100.0))


@pytest.mark.parametrize(
    ("dtype", "full_scale"),
    [(np.int16, 32768.0), (np.int32, 2.0**31), (np.uint8, None)],
)
def test_wav_integer_pcm_is_scaled_to_unit_then_to_g(
    tmp_path: Path, dtype: type[np.integer], full_scale: float | None
) -> None:
    # Prepare: two channels at half and quarter scale; scale_g says 5 g at full scale
    x = np.stack([sine(800, 8000.0, 100.0, 0.5), sine(800, 8000.0, 200.0, 0.25)], axis=1)
    if full_scale is None:  # 8-bit WAV is unsigned, centred on 128
        pcm = np.round(x * 127 + 128).astype(dtype)
        expected = (pcm.astype(np.float64) - 128) / 128 * 5.0
    else:
        pcm = np.round(x * (full_scale - 1)).astype(dtype)
        expected = pcm.astype(np.float64) / full_scale * 5.0
    path = tmp_path / "r.wav"
    wavfile.write(path, 8000, pcm)

    # Execute
    record = read_record(info_for(path, ("ch0", "ch1"), 8000.0, scale_g="5"))

    # Assert
    np.testing.assert_allclose(record.signals["ch0"], expected[:, 0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(record.signals["ch1"], expected[:, 1], rtol=1e-6, atol=1e-7)
    assert np.abs(record.signals["ch0"]).max() == pytest.approx(2.5, rel=0.02)


def test_float_wav_is_kept_and_mono_is_ch0(tmp_path: Path) -> None:
    # Prepare
    x = sine(400, 4000.0, 100.0, 3.0)  # already in g, beyond [-1, 1]
    path = tmp_path / "f.wav"
    wavfile.write(path, 4000, x)

    # Execute
    record = read_record(info_for(path, ("ch0",), 4000.0))

    # Assert
    np.testing.assert_array_equal(record.signals["ch0"], x)


def test_wav_rate_must_match_the_manifest_and_scale_must_be_a_number(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "r.wav"
    wavfile.write(path, 8000, np.zeros(10, np.int16))

    # Execute / Assert
    with pytest.raises(DatasetError, match="sampled at 8000 Hz, the manifest says 12000"):
        read_record(info_for(path, ("ch0",), 12_000.0))
    with pytest.raises(DatasetError, match="scale_g 'loud' is not a number"):
        read_record(info_for(path, ("ch0",), 8000.0, scale_g="loud"))
    with pytest.raises(DatasetError, match=r"no channel\(s\) ch1 \(has: ch0\)"):
        read_record(info_for(path, ("ch1",), 8000.0))


def test_broken_wav_and_mat_files_are_dataset_errors(tmp_path: Path) -> None:
    # Prepare
    wav, mat = tmp_path / "b.wav", tmp_path / "b.mat"
    wav.write_bytes(b"RIFF0000WAVEjunk")
    mat.write_bytes(b"not matlab at all" * 10)

    # Execute / Assert
    with pytest.raises(DatasetError, match="not a readable WAV"):
        read_record(info_for(wav, ("ch0",), 8000.0))
    with pytest.raises(DatasetError, match="not a readable MATLAB"):
        read_record(info_for(mat, ("de",), 8000.0))


def test_mat_with_several_record_numbers_takes_the_manifest_one(tmp_path: Path) -> None:
    # Prepare: like CWRU's 99.mat, which also carries record 98's variables
    de98, de99, fe99 = (np.full((20, 1), v) for v in (1.0, 2.0, 3.0))
    path = tmp_path / "normal_2_99.mat"
    variables = {"X098_DE_time": de98, "X099_DE_time": de99, "X099_FE_time": fe99}
    savemat(path, {**variables, "X098RPM": np.array([[1772]]), "X099RPM": np.array([[1750]])})
    by_name = info_for(path, ("de", "fe"), 12_000.0)
    by_column = info_for(path, ("de",), 12_000.0, official_file_no="98")

    # Execute
    rec99 = read_record(by_name)
    rec98 = read_record(by_column)

    # Assert
    assert rec99.signals["de"][0] == 2.0
    assert rec99.signals["fe"][0] == 3.0
    assert rec99.info.rpm == 1750.0
    assert rec98.signals["de"][0] == 1.0
    assert rec98.info.rpm == 1772.0
    with pytest.raises(DatasetError, match=r"no channel\(s\) fe \(has: de\)"):
        read_record(dataclasses.replace(by_column, channels=("fe",)))


def test_mat_with_one_foreign_record_number_and_ambiguous_ones(tmp_path: Path) -> None:
    # Prepare: a file whose variables carry another number (CWRU has such files)
    single = tmp_path / "IR028_0_3001.mat"
    savemat(single, {"X056_DE_time": np.ones((8, 1)), "X056RPM": np.array([[1797]])})
    several = tmp_path / "x_7.mat"
    savemat(several, {"X001_DE_time": np.ones((8, 1)), "X002_DE_time": np.ones((8, 1))})

    # Execute
    record = read_record(info_for(single, ("de",), 12_000.0))

    # Assert
    assert record.n_samples == 8
    assert record.info.rpm == 1797.0
    with pytest.raises(DatasetError, match=r"holds records X001, X002, none is record 7"):
        read_record(info_for(several, ("de",), 12_000.0))


def test_mat_with_variables_named_by_channel(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "plain.mat"
    savemat(path, {"acc_x": np.arange(5.0), "acc_y": np.arange(5.0) * 2})

    # Execute
    record = read_record(info_for(path, ("acc_y",), 100.0))

    # Assert
    np.testing.assert_array_equal(record.signals["acc_y"], np.arange(5.0, dtype=np.float32) * 2)


# --- The real CWRU files ---------------------------------------------------------------------


def test_cwru_manifest_loads_every_record(cwru_root: Path) -> None:
    # Execute
    infos = load_manifest(cwru_root / "MANIFEST.tsv")

    # Assert
    assert len(infos) == 61
    normal = next(i for i in infos if i.fault_type == "normal")
    assert (normal.name, normal.sample_rate_hz, normal.rpm) == ("normal_0_97", 48_000.0, 1796.0)
    deep = next(i for i in infos if i.name == "12k_Drive_End_B028_0_3005")
    assert deep.channels == ("de",)
    assert deep.rpm == 1797.0  # no measured rpm: nominal
    assert deep.metadata["fault_diameter_in"] == "0.028"


@pytest.mark.parametrize(
    ("stem", "rpm"), [("12k_Drive_End_IR007_0_105", 1797.0), ("normal_0_97", 1796.0)]
)
def test_cwru_mat_and_npz_of_one_record_give_the_same_samples(
    cwru_root: Path, stem: str, rpm: float
) -> None:
    # Prepare: the manifest row, pointed at the original MATLAB file, without rpm
    infos = {i.name: i for i in load_manifest(cwru_root / "MANIFEST.tsv")}
    npz_info = infos[stem]
    mat_info = dataclasses.replace(
        npz_info, path=cwru_root / "original-mat" / f"{stem}.mat", rpm=None
    )

    # Execute
    from_mat = read_record(mat_info)
    from_npz = read_record(npz_info)

    # Assert
    np.testing.assert_array_equal(from_mat.signals["de"], from_npz.signals["de"])
    np.testing.assert_array_equal(from_mat.signals["fe"], from_npz.signals["fe"])
    assert from_mat.info.rpm == rpm  # from the X...RPM variable
    assert from_mat.n_samples == int(npz_info.metadata["n_samples"])


def test_cwru_mat_base_channel_and_its_absence(cwru_root: Path) -> None:
    # Prepare
    ir = cwru_root / "original-mat" / "12k_Drive_End_IR007_0_105.mat"
    normal = cwru_root / "original-mat" / "normal_0_97.mat"

    # Execute
    record = read_record(info_for(ir, ("ba",), 12_000.0))

    # Assert: record 105 has a base accelerometer, the normal record 97 has none
    assert record.n_samples == 121_265
    assert np.std(record.signals["ba"]) > 0
    with pytest.raises(DatasetError, match=r"no channel\(s\) ba \(has: de, fe\)"):
        read_record(info_for(normal, ("ba",), 48_000.0))


def test_cwru_normal_record_resamples_to_12_khz(cwru_root: Path) -> None:
    # Prepare
    (normal,) = [i for i in load_manifest(cwru_root / "MANIFEST.tsv") if i.fault_type == "normal"]

    # Execute
    record = read_record(normal, channels=["de"], target_fs=12_000.0)

    # Assert
    assert record.sample_rate_hz == 12_000.0
    assert record.n_samples == pytest.approx(243_938 / 4, abs=1)
