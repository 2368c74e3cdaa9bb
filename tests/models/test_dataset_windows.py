"""Tests for models.dataset_windows: labels, filters, leak-free splits and windowing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.dataset_windows import (
    RecordFilter,
    WindowOptions,
    build_windows,
    class_label,
    order_classes,
    plan_record_split,
    plan_time_split,
    select,
)
from models.datasets import RecordInfo, load_manifest
from models.errors import DatasetError

WINDOW = 16


def info(name: str, fault: str, size: str = "", load: str = "0", fs: float = 1000.0) -> RecordInfo:
    meta = {"fault_diameter_in": size, "motor_load_hp": load, "or_position": ""}
    return RecordInfo(Path(f"/data/{name}.npz"), fault, fs, 1797.0, ("de",), meta)


def ramp_record(folder: Path, name: str, fault: str, n: int, fs: float = 1000.0) -> RecordInfo:
    """A record whose sample values are their own indices (at the model rate when fs matches)."""
    path = folder / f"{name}.npz"
    np.savez(path, de=np.arange(n, dtype=np.float32), fe=-np.arange(n, dtype=np.float32))
    return RecordInfo(path, fault, fs, None, ("de", "fe"), {"fault_diameter_in": "0.007"})


# --- Labels and filters ----------------------------------------------------------------------


def test_labels_by_fault_and_by_fault_size() -> None:
    # Prepare
    ir = info("ir", "inner_race", "0.014")
    normal = info("n", "normal", "0.000")

    # Execute / Assert
    assert class_label(ir) == "inner_race"
    assert class_label(ir, "fault_size") == "inner_race@0.014"
    assert class_label(normal, "fault_size") == "normal"


@pytest.mark.parametrize("size", ["", "0", "small", "-0.007", "inf"])
def test_fault_size_label_needs_a_positive_diameter(size: str) -> None:
    # Execute / Assert
    with pytest.raises(DatasetError, match=r"ir\.npz: fault_diameter_in"):
        class_label(info("ir", "inner_race", size), "fault_size")


def test_unknown_label_scheme_is_refused() -> None:
    # Execute / Assert
    with pytest.raises(DatasetError, match="unknown label scheme"):
        class_label(info("a", "ball"), "severity")  # type: ignore[arg-type]


def test_classes_are_ordered_normal_first_then_by_fault_and_size() -> None:
    # Prepare
    labels = ["ball@0.021", "outer_race@0.007", "cage", "inner_race@0.014", "normal",
              "inner_race@0.007", "ball@0.007", "inner_race@0.007"]  # fmt: skip

    # Execute
    ordered = order_classes(labels)

    # Assert
    assert ordered == (
        "normal", "inner_race@0.007", "inner_race@0.014", "outer_race@0.007", "ball@0.007",
        "ball@0.021", "cage",
    )  # fmt: skip


def test_filters_match_numbers_by_value_empty_cells_and_negation() -> None:
    # Prepare
    records = [
        info("a", "normal", "0.000", "0"),
        info("b", "inner_race", "0.007", "1"),
        info("c", "inner_race", "0.028", "3"),
    ]

    # Execute
    loads = select(records, [RecordFilter.parse("motor_load_hp=0.0,1")])
    not_deep = select(records, [RecordFilter.parse("fault_diameter_in != 0.028")])
    both = select(records, [RecordFilter.parse("fault_type=inner_race"),
                            RecordFilter.parse("motor_load_hp!=1")])  # fmt: skip
    empty = select(records, [RecordFilter.parse("or_position=")])

    # Assert
    assert [r.name for r in loads] == ["a", "b"]
    assert [r.name for r in not_deep] == ["a", "b"]
    assert [r.name for r in both] == ["c"]
    assert len(empty) == 3
    assert str(RecordFilter.parse("a!=1,2")) == "a!=1,2"


def test_filters_on_typed_fields_and_their_errors() -> None:
    # Prepare
    records = [info("a", "normal", fs=48_000.0), info("b", "ball", fs=12_000.0)]

    # Execute
    fast = select(records, [RecordFilter.parse("sample_rate_hz=48000")])
    by_file = select(records, [RecordFilter.parse("file=b.npz")])

    # Assert
    assert [r.name for r in fast] == ["a"]
    assert [r.name for r in by_file] == ["b"]
    with pytest.raises(DatasetError, match="is not COLUMN=VALUE"):
        RecordFilter.parse("motor_load_hp")
    with pytest.raises(DatasetError, match="no column 'colour' to filter on"):
        select(records, [RecordFilter.parse("colour=red")])


# --- Split plans -----------------------------------------------------------------------------


def test_time_split_plan_splits_every_record() -> None:
    # Prepare
    records = [info("a", "normal"), info("b", "ball", "0.007")]

    # Execute
    plan = plan_time_split(records)

    # Assert
    assert [p for _, p in plan.parts] == ["split", "split"]
    assert plan.classes("test", "fault") == ("normal", "ball")


def test_record_split_holds_out_the_last_record_of_each_class() -> None:
    # Prepare: two ball records, three inner race, one normal
    records = [
        info("n0", "normal"),
        info("b0", "ball", load="0"),
        info("i0", "inner_race", load="0"),
        info("b1", "ball", load="1"),
        info("i1", "inner_race", load="1"),
        info("i2", "inner_race", load="2"),
    ]

    # Execute
    plan = plan_record_split(records)

    # Assert: the lone normal record is split in time so it is still tested
    assert [i.name for i in plan.records("test")] == ["b1", "i2"]
    assert [i.name for i in plan.records("train")] == ["b0", "i0", "i1"]
    assert [i.name for i in plan.records("split")] == ["n0"]


def test_record_split_with_test_records_for_cross_load() -> None:
    # Prepare: CWRU-like, normal only at 0 HP
    records = [info("n0", "normal", load="0")] + [
        info(f"{f}{load}", f, "0.007", load) for f in ("ball", "inner_race") for load in "0123"
    ]
    train = select(records, [RecordFilter.parse("motor_load_hp=0,1,2")])
    test = select(records, [RecordFilter.parse("motor_load_hp=3")])

    # Execute
    plan = plan_record_split(train, test, scheme="fault_size")

    # Assert
    assert sorted(i.name for i in plan.records("test")) == ["ball3", "inner_race3"]
    assert len(plan.records("train")) == 6
    assert [i.name for i in plan.records("split")] == ["n0"]
    assert plan.classes("test", "fault_size") == ("normal", "inner_race@0.007", "ball@0.007")


def test_record_split_refuses_untrained_test_classes_and_empty_training() -> None:
    # Prepare
    normal, ball = info("n", "normal"), info("b", "ball", "0.007")

    # Execute / Assert
    with pytest.raises(DatasetError, match="test records of classes nothing trains: ball"):
        plan_record_split([normal], [ball])
    with pytest.raises(DatasetError, match="no training records left"):
        plan_record_split([ball], [ball])


# --- Windows ---------------------------------------------------------------------------------


def test_time_split_windows_never_cross_the_cut(tmp_path: Path) -> None:
    # Prepare: 1000 samples, cut at 700; overlapping training windows
    rec = ramp_record(tmp_path, "r", "ball", 1000)
    options = WindowOptions(
        sample_rate_hz=1000.0, window_samples=WINDOW, channels=("de",), train_hop=4
    )

    # Execute
    train, test = build_windows(plan_time_split([rec]), options)

    # Assert: samples are their indices, so each window shows where it came from
    first, last = train.x[:, 0, 0], train.x[:, 0, -1]
    assert last.max() < 700 <= test.x[:, 0, 0].min()
    np.testing.assert_array_equal(first, train.start)
    assert len(train) == (700 - WINDOW) // 4 + 1
    assert len(test) == 300 // WINDOW  # non-overlapping by default
    np.testing.assert_array_equal(test.start, 700 + WINDOW * np.arange(len(test)))
    assert train.x.shape[1:] == (1, WINDOW)
    assert train.x.dtype == np.float32
    assert set(train.y.tolist()) == set(test.y.tolist()) == {0}


def test_windows_stack_channels_and_label_records(tmp_path: Path) -> None:
    # Prepare
    a = ramp_record(tmp_path, "a", "normal", 200)
    b0 = ramp_record(tmp_path, "b0", "ball", 200)
    b1 = ramp_record(tmp_path, "b1", "ball", 200)
    options = WindowOptions(
        sample_rate_hz=1000.0, window_samples=WINDOW, channels=("fe", "de"), train_fraction=0.5
    )

    # Execute
    train, test = build_windows(plan_record_split([a, b0, b1], [b1]), options)

    # Assert: a is the only normal record, so it is split in time; b0 trains, b1 tests whole
    assert train.class_names == ("normal", "ball")
    assert train.records == test.records == (a, b0, b1)
    np.testing.assert_array_equal(train.x[:, 0], -train.x[:, 1])  # fe = -de
    assert train.start[train.record == 0].max() + WINDOW <= 100
    assert (train.record == 1).sum() == 200 // WINDOW
    assert set(test.record.tolist()) == {0, 2}
    assert test.start[test.record == 0].min() >= 100
    assert test.start[test.record == 2].tolist() == list(range(0, 200 - WINDOW + 1, WINDOW))
    assert test.y[test.record == 2].tolist() == [1] * (200 // WINDOW)


def test_windows_are_cut_at_the_model_rate(tmp_path: Path) -> None:
    # Prepare: a 4 kHz record feeding a 1 kHz model
    rec = ramp_record(tmp_path, "r", "ball", 4000, fs=4000.0)
    options = WindowOptions(sample_rate_hz=1000.0, window_samples=WINDOW)

    # Execute
    train, test = build_windows(plan_time_split([rec]), options)

    # Assert: 1000 samples after resampling, 700 + 300
    assert len(train) == 700 // WINDOW
    assert len(test) == 300 // WINDOW


def test_test_windows_depend_only_on_the_test_part_even_when_resampled(tmp_path: Path) -> None:
    # Prepare: two 4 kHz records equal after the 70 % cut, different before it
    rng = np.random.default_rng(0)
    tail = rng.standard_normal(1200).astype(np.float32)
    paths = []
    for name, head in (("quiet", np.zeros(2800)), ("loud", 100 * rng.standard_normal(2800))):
        np.savez(tmp_path / f"{name}.npz", de=np.concatenate([head, tail]).astype(np.float32))
        paths.append(RecordInfo(tmp_path / f"{name}.npz", "ball", 4000.0, None, ("de",), {}))
    options = WindowOptions(sample_rate_hz=1000.0, window_samples=WINDOW)

    # Execute
    _, quiet = build_windows(plan_time_split(paths[:1]), options)
    _, loud = build_windows(plan_time_split(paths[1:]), options)

    # Assert: the resampling filter never reached across the cut
    assert len(quiet) == 300 // WINDOW
    np.testing.assert_array_equal(quiet.x, loud.x)
    np.testing.assert_array_equal(quiet.start, 700 + WINDOW * np.arange(len(quiet)))


def test_speed_factors_add_resampled_training_windows_only(tmp_path: Path) -> None:
    # Prepare
    rec = ramp_record(tmp_path, "r", "ball", 1000)
    plain = WindowOptions(sample_rate_hz=1000.0, window_samples=WINDOW)
    faster = WindowOptions(sample_rate_hz=1000.0, window_samples=WINDOW, speed_factors=(1.0, 0.5))

    # Execute
    train_plain, test_plain = build_windows(plan_time_split([rec]), plain)
    train_aug, test_aug = build_windows(plan_time_split([rec]), faster)

    # Assert: the 700-sample part once as is and once at half the rate (350 samples)
    assert len(train_aug) == 700 // WINDOW + 350 // WINDOW
    np.testing.assert_array_equal(train_aug.x[: len(train_plain)], train_plain.x)
    np.testing.assert_array_equal(test_aug.x, test_plain.x)
    with pytest.raises(DatasetError, match="speed factors must lie in"):
        WindowOptions(speed_factors=(1.0, 3.0))
    with pytest.raises(DatasetError, match="speed factors must lie in"):
        WindowOptions(speed_factors=())


def test_class_not_in_given_names_and_bad_options_are_refused(tmp_path: Path) -> None:
    # Prepare
    rec = ramp_record(tmp_path, "r", "ball", 100)

    # Execute / Assert
    with pytest.raises(DatasetError, match="class 'ball' is not one of"):
        build_windows(plan_time_split([rec]), class_names=("normal", "inner_race"))
    with pytest.raises(DatasetError, match="train_fraction"):
        WindowOptions(train_fraction=1.0)
    with pytest.raises(DatasetError, match="hops must be"):
        WindowOptions(test_hop=0)


def test_short_record_gives_no_windows(tmp_path: Path) -> None:
    # Prepare
    rec = ramp_record(tmp_path, "r", "ball", WINDOW)
    options = WindowOptions(sample_rate_hz=1000.0, window_samples=WINDOW)

    # Execute
    train, test = build_windows(plan_time_split([rec]), options)

    # Assert
    assert len(train) == len(test) == 0
    assert train.x.shape == (0, 1, WINDOW)


def test_cwru_classic_ten_class_selection(cwru_root: Path) -> None:
    # Prepare
    infos = load_manifest(cwru_root / "MANIFEST.tsv")
    filters = [
        RecordFilter.parse(f)
        for f in ("motor_load_hp=0", "or_position!=@3:00,@12:00", "fault_diameter_in!=0.028")
    ]

    # Execute
    chosen = select(infos, filters)
    plan = plan_time_split(chosen)

    # Assert
    assert len(chosen) == 10
    assert plan.classes("train", "fault_size") == (
        "normal",
        "inner_race@0.007", "inner_race@0.014", "inner_race@0.021",
        "outer_race@0.007", "outer_race@0.014", "outer_race@0.021",
        "ball@0.007", "ball@0.014", "ball@0.021",
    )  # fmt: skip
