"""Labels from a CSV of maintenance events (and CMMS failure codes over MQTT) into the store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import CLASSES, FS_HZ, T0_NS

from edge_agent.errors import MessageRejected
from edge_agent.labels_csv import LabelImportError, import_labels_csv, parse_labels_csv
from edge_agent.messages import LabelEvent
from edge_agent.store import LocalStore
from fedpm.commands import edge_labels
from models.windows import Window

WINDOW_NS = round(2048 * 1e9 / FS_HZ)
HEADER = "asset_id,start,end,label,failure_code,sensor_id,source\n"


def write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def labels_in(store: LocalStore) -> list[tuple[object, ...]]:
    with store.reader() as conn:
        return conn.execute(
            "SELECT asset_id, sensor_id, label, start_ns, end_ns, source FROM labels ORDER BY id"
        ).fetchall()


def test_a_good_file_labels_the_windows_in_its_spans(store: LocalStore, tmp_path: Path) -> None:
    # Prepare: 6 windows of pump-1; a work order over the last 3, an operator label over the rest
    store.add_windows(
        "pump-1",
        "acc-1",
        0,
        [Window(T0_NS + k * WINDOW_NS, FS_HZ, np.zeros(2048, np.float32)) for k in range(6)],
    )
    csv_text = (
        HEADER
        + f"pump-1,{T0_NS},{T0_NS + 3 * WINDOW_NS},normal,,,operator\n"
        + f"pump-1,{T0_NS + 3 * WINDOW_NS},{T0_NS + 6 * WINDOW_NS},,BRG-OR,acc-1,cmms\n"
    )
    path = write(tmp_path, csv_text)

    # Execute
    report = import_labels_csv(store, path)
    data = store.labelled_windows(CLASSES, FS_HZ, 2048)

    # Assert
    assert (report.rows, report.added, report.already_present) == (2, 2, 0)
    assert report.by_label == {"normal": 1, "outer_race": 1}
    assert [CLASSES[i] for i in data.y] == ["normal"] * 3 + ["outer_race"] * 3
    assert labels_in(store)[1][1:3] == ("acc-1", "outer_race")
    assert labels_in(store)[1][5] == "cmms"


def test_iso_times_need_a_zone_and_become_nanoseconds() -> None:
    # Prepare
    text = HEADER + "pump-1,2026-03-01T08:00:00Z,2026-03-01T09:00:00.5+01:00,ball,,,\n"

    # Execute
    (event,) = parse_labels_csv(text)

    # Assert: 08:00 UTC to 08:00:00.5 UTC; the default source
    assert event.end_ns - event.start_ns == 500_000_000
    assert event.start_ns == 1_772_352_000 * 10**9
    assert event.source == "csv"


def test_import_is_idempotent(store: LocalStore, tmp_path: Path) -> None:
    # Prepare: the file repeats one row, and the store already holds one of its labels
    row = f"pump-1,{T0_NS},{T0_NS + 10**9},inner_race,,,\n"
    path = write(tmp_path, HEADER + row + row + f"pump-2,{T0_NS},{T0_NS + 10**9},normal,,,\n")
    store.add_label("pump-2", "normal", T0_NS, T0_NS + 10**9, source="mqtt")

    # Execute
    first = import_labels_csv(store, path)
    again = import_labels_csv(store, path)

    # Assert
    assert (first.added, first.already_present) == (1, 2)
    assert (again.added, again.already_present) == (0, 3)
    assert store.count_labels() == 2


def test_every_bad_row_is_reported_by_line_and_nothing_is_written(
    store: LocalStore, tmp_path: Path
) -> None:
    # Prepare: good rows around seven bad ones
    good = f"pump-1,{T0_NS},{T0_NS + 10**9},normal,,,\n"
    path = write(
        tmp_path,
        HEADER
        + good  # line 2
        + f"pump-1,{T0_NS + 10**9},{T0_NS},normal,,,\n"  # 3: end before start
        + "pump-1,2026-03-01T08:00:00,2026-03-01T09:00:00Z,normal,,,\n"  # 4: no zone
        + "pump-1,1700000000,1700000100,normal,,,\n"  # 5: seconds
        + f"pump-1,{T0_NS},{T0_NS + 10**9},,XYZ-99,,\n"  # 6: unknown code
        + f"pump-1,{T0_NS},{T0_NS + 10**9},,,,\n"  # 7: no label
        + f"pump 1,{T0_NS},{T0_NS + 10**9},normal,,,\n"  # 8: bad asset id
        + f"pump-1,{T0_NS},{T0_NS + 10**9},normal,,,,extra\n"  # 9: extra cell
        + good.replace("pump-1", "pump-3"),  # 10
    )

    # Execute
    with pytest.raises(LabelImportError) as caught:
        import_labels_csv(store, path)

    # Assert
    errors = dict(caught.value.errors)
    assert sorted(errors) == [3, 4, 5, 6, 7, 8, 9]
    assert "end_ns must be after start_ns" in errors[3]
    assert "no time zone" in errors[4]
    assert "seconds or milliseconds" in errors[5]
    assert "unknown failure code 'XYZ-99'" in errors[6]
    assert "needs a label or a failure_code" in errors[7]
    assert errors[8].startswith("asset_id")
    assert "more cells than columns" in errors[9]
    assert "line 3:" in str(caught.value)
    assert store.count_labels() == 0


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("asset_id,start,end,label,when\n", "unknown columns ['when']"),
        ("asset_id,start,label\n", "missing columns ['end']"),
        ("asset_id,start,end,source\n", "needs a label or a failure_code column"),
        ("", "needs a header row"),
    ],
)
def test_a_bad_header_is_refused(header: str, message: str) -> None:
    with pytest.raises(LabelImportError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_labels_csv(header and header + f"pump-1,{T0_NS},{T0_NS + 1},normal\n")


def test_site_failure_codes_extend_and_override_the_defaults() -> None:
    # Prepare
    text = HEADER + "".join(
        f"pump-1,{T0_NS},{T0_NS + 10**9},,{code},,\n" for code in ("pmp-brg-07", "BRG-OR", "nff")
    )

    # Execute
    events = parse_labels_csv(text, {"PMP-BRG-07": "inner_race", "brg-or": "ball"})

    # Assert
    assert [e.label for e in events] == ["inner_race", "ball", "normal"]
    assert [e.failure_code for e in events] == ["pmp-brg-07", "BRG-OR", "nff"]


def test_work_order_over_mqtt_may_carry_a_failure_code() -> None:
    # Prepare
    event = {"v": 1, "asset_id": "pump-1", "start_ns": T0_NS, "end_ns": T0_NS + 1}

    # Execute
    parsed = LabelEvent.parse(json.dumps({**event, "failure_code": "brg-ir"}).encode())
    with pytest.raises(MessageRejected, match="unknown failure code") as caught:
        LabelEvent.parse(json.dumps({**event, "failure_code": "XYZ"}).encode())

    # Assert
    assert (parsed.label, parsed.failure_code) == ("inner_race", "brg-ir")
    assert caught.value.reason == "label_schema"


# --- the fedpm command ------------------------------------------------------------------------


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fedpm edge-labels")
    edge_labels.add_arguments(parser)
    return edge_labels.run(parser.parse_args(list(argv)))


def test_command_imports_and_reports_json(
    store: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    path = write(tmp_path, HEADER + f"pump-1,{T0_NS},{T0_NS + 10**9},,PMP-7,,\n")
    out = tmp_path / "out.json"

    # Execute
    code = run_command(
        "import", "--store", str(store.path), str(path), "--map", "PMP-7=cage", "--json", str(out)
    )

    # Assert
    assert code == 0
    assert "1 labels read, 1 added" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert (result["imported"], result["added"], result["by_label"]) == (True, 1, {"cage": 1})
    assert store.count_labels() == 1


def test_command_lists_bad_rows_and_exits_1(
    store: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    path = write(tmp_path, HEADER + f"pump-1,{T0_NS},{T0_NS + 10**9},,NOPE,,\n")
    out = tmp_path / "out.json"

    # Execute
    code = run_command("import", "--store", str(store.path), str(path), "--json", str(out))

    # Assert
    assert code == 1
    assert "line 2: unknown failure code 'NOPE'" in capsys.readouterr().err
    assert json.loads(out.read_text())["errors"][0]["line"] == 2
    assert store.count_labels() == 0


def test_command_refuses_a_missing_store_and_a_bad_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    path = write(tmp_path, HEADER)
    missing = tmp_path / "nope.sqlite"

    # Execute
    no_store = run_command("import", "--store", str(missing), str(path))
    bad_map = run_command("import", "--store", str(missing), str(path), "--map", "PMP-7")

    # Assert
    assert (no_store, bad_map) == (1, 2)
    assert not missing.exists()
    assert "--map takes CODE=CLASS" in capsys.readouterr().err
