r"""Import maintenance labels from a CSV file (CMMS work orders, operator logs) into the store.

Format: UTF-8 (a spreadsheet's byte-order mark is fine), comma-separated, one header row. Columns
(any order; others are refused, so a misspelt column is not silently ignored):

================  ========  ===================================================================
column            required  meaning
================  ========  ===================================================================
``asset_id``      yes       the asset, as in the agent's topics (``[A-Za-z0-9_.:-]{1,64}``)
``start``         yes       span start: ISO 8601 with a time zone (``2026-03-01T08:00:00Z``,
                            ``...+01:00``) or integer UNIX nanoseconds
``end``           yes       span end, same forms, after ``start``
``label``         one of    the FedPM class (``normal``, ``inner_race``, ...)
``failure_code``  the two   a CMMS failure code mapped to a class (``models.failure_codes``, plus
                            the caller's own codes); ``label`` wins when a row has both
``sensor_id``     no        one sensor of the asset; empty: every sensor
``source``        no        who says so (default ``csv``), at most 64 characters
================  ========  ===================================================================

A label covers the windows lying inside its span (training) and keeps windows overlapping a
fault label out of the asset's healthy baseline (:mod:`edge_agent.baselines`).

All or nothing: the whole file is validated first and, if any row is bad, nothing is written
and :class:`LabelImportError` lists every bad row by its line number. A valid file is written
in one transaction. Importing is idempotent: a label already in the store (same asset, sensor,
class and span, from the file, an earlier import or MQTT) is counted, not stored twice.

Examples
--------
>>> text = "asset_id,start,end,failure_code\n" + "pump-1,2026-03-01T08:00Z,2026-03-01T09:00Z,BRG-OR"
>>> rows = parse_labels_csv(text)
>>> rows[0].label, rows[0].end_ns - rows[0].start_ns
('outer_race', 3600000000000)
"""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from edge_agent.errors import EdgeAgentError
from edge_agent.messages import LabelEvent
from edge_agent.store import LocalStore
from models.failure_codes import resolve_failure_code

COLUMNS: Final = ("asset_id", "start", "end", "label", "failure_code", "sensor_id", "source")
REQUIRED: Final = ("asset_id", "start", "end")
DEFAULT_SOURCE: Final = "csv"
MAX_ERRORS_SHOWN: Final = 50
#: Integer times below this (1973-03-03 in ns) are seconds or milliseconds by mistake.
MIN_PLAUSIBLE_NS: Final = 10**17
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class LabelImportError(EdgeAgentError):
    """A labels file that cannot be imported; ``errors`` holds (line, message) per bad row."""

    def __init__(self, message: str, errors: Sequence[tuple[int, str]] = ()) -> None:
        self.errors = list(errors)
        shown = [f"line {line}: {text}" for line, text in self.errors[:MAX_ERRORS_SHOWN]]
        more = len(self.errors) - len(shown)
        if more > 0:
            shown.append(f"... and {more} more bad rows")
        super().__init__("\n".join([message, *shown]))


@dataclass(frozen=True)
class ImportReport:
    """What an import did: rows read, labels added, labels already present, rows per class."""

    rows: int
    added: int
    already_present: int
    by_label: dict[str, int] = field(default_factory=dict)


def parse_time_ns(value: str) -> int:
    """UNIX nanoseconds from ISO 8601 with a time zone, or from an integer of nanoseconds.

    Raises
    ------
    ValueError
        Empty, without a time zone, not a date, or an integer too small to be nanoseconds.

    Examples
    --------
    >>> parse_time_ns("1970-01-02T00:00:00.5+00:00"), parse_time_ns("1700000000000000000")
    (86400500000000, 1700000000000000000)
    """
    text = value.strip()
    if not text:
        raise ValueError("is empty")
    if text.lstrip("-").isdigit():
        ns = int(text)
        if ns < MIN_PLAUSIBLE_NS:
            raise ValueError(
                f"{text} is not UNIX nanoseconds (before 1973: seconds or milliseconds?)"
            )
        return ns
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither ISO 8601 nor integer nanoseconds") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z (UTC) or an offset like +01:00")
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _row_event(row: Mapping[str, str], failure_codes: Mapping[str, str] | None) -> LabelEvent:
    errors = []
    times = {}
    for column in ("start", "end"):
        try:
            times[column] = parse_time_ns(row.get(column) or "")
        except ValueError as exc:
            errors.append(f"{column} {exc}")
    label = (row.get("label") or "").strip()
    code = (row.get("failure_code") or "").strip()
    if not label and code:
        try:
            label = resolve_failure_code(code, failure_codes)
        except KeyError as exc:
            errors.append(str(exc.args[0]))
    elif not label:
        errors.append("needs a label or a failure_code")
    if errors:
        raise ValueError("; ".join(errors))
    fields: dict[str, object] = {
        "v": 1,
        "asset_id": (row.get("asset_id") or "").strip(),
        "label": label,
        "start_ns": times["start"],
        "end_ns": times["end"],
        "source": (row.get("source") or "").strip() or DEFAULT_SOURCE,
    }
    if code:
        fields["failure_code"] = code
    sensor = (row.get("sensor_id") or "").strip()
    if sensor:
        fields["sensor_id"] = sensor
    try:
        return LabelEvent.model_validate(fields)
    except ValidationError as exc:
        raise ValueError("; ".join(_describe(err) for err in exc.errors())) from None


def _describe(err: Mapping[str, object]) -> str:
    loc = err.get("loc") or ()
    where = ".".join(str(p) for p in loc) if isinstance(loc, tuple) else ""
    column = {"start_ns": "start", "end_ns": "end"}.get(where, where)
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{column} {message}" if column else message


def parse_labels_csv(text: str, failure_codes: Mapping[str, str] | None = None) -> list[LabelEvent]:
    """Validate a whole labels file and return its label events, in file order.

    Parameters
    ----------
    text
        The file's content (see the module docstring for the format).
    failure_codes
        Site failure codes (any case) -> FedPM class, added to and overriding the defaults.

    Raises
    ------
    LabelImportError
        A bad header, or bad rows (every one listed with its line number).
    """
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    if not header:
        raise LabelImportError("the labels file is empty: it needs a header row")
    unknown = [name for name in header if name not in COLUMNS]
    missing = [name for name in REQUIRED if name not in header]
    if unknown or missing or not {"label", "failure_code"} & set(header):
        problems = []
        if unknown:
            problems.append(f"unknown columns {unknown}")
        if missing:
            problems.append(f"missing columns {missing}")
        if not {"label", "failure_code"} & set(header):
            problems.append("needs a label or a failure_code column")
        raise LabelImportError(
            f"bad header (line 1): {'; '.join(problems)}; the columns are {', '.join(COLUMNS)}"
        )
    reader.fieldnames = header
    events: list[LabelEvent] = []
    errors: list[tuple[int, str]] = []
    line = 1
    try:
        for row in reader:
            line = reader.line_num
            if None in row:
                errors.append((line, f"{len(row[None])} more cells than columns"))
                continue
            try:
                events.append(_row_event(row, failure_codes))
            except ValueError as exc:
                errors.append((line, str(exc)))
    except csv.Error as exc:
        errors.append((reader.line_num or line, f"not valid CSV: {exc}"))
    if errors:
        raise LabelImportError(
            f"{len(errors)} bad rows: nothing was imported; fix them and import again", errors
        )
    return events


def import_labels(store: LocalStore, events: Sequence[LabelEvent]) -> ImportReport:
    """Store ``events`` in one transaction, skipping those already present."""
    added = 0
    now = time.time_ns()
    with store.transaction() as conn:
        for e in events:
            found = conn.execute(
                "SELECT 1 FROM labels WHERE asset_id = ? AND ifnull(sensor_id, '') = ?"
                " AND label = ? AND start_ns = ? AND end_ns = ?",
                (e.asset_id, e.sensor_id or "", e.label, e.start_ns, e.end_ns),
            ).fetchone()
            if found is None:
                conn.execute(
                    "INSERT INTO labels (asset_id, sensor_id, label, start_ns, end_ns, source,"
                    " received_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (e.asset_id, e.sensor_id, e.label, e.start_ns, e.end_ns, e.source, now),
                )
                added += 1
    by_label = dict(sorted(Counter(e.label for e in events).items()))
    return ImportReport(len(events), added, len(events) - added, by_label)


def import_labels_csv(
    store: LocalStore, path: str | Path, failure_codes: Mapping[str, str] | None = None
) -> ImportReport:
    """Validate the labels file at ``path`` and import it into ``store`` (all or nothing).

    Raises
    ------
    LabelImportError
        The file cannot be read, is not UTF-8, or has bad rows (nothing is written).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LabelImportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise LabelImportError(f"{path} is not UTF-8 text: {exc}") from exc
    return import_labels(store, parse_labels_csv(text, failure_codes))
