"""Pull the labels of closed maintenance requests from the serving API into a site's store.

``GET /v1/labels?site=...&after=<cursor>`` pages through the labels the cloud recorded when a
CMMS closed a maintenance request with a failure code (docs/erp-integration.md). Each page is
validated as :class:`~edge_agent.messages.LabelEvent` and written with
:func:`~edge_agent.labels_csv.import_labels` in one transaction (a label already in the store is
counted, not added again), and only then is the cursor saved, atomically, next to the store
(``<store>.labels-cursor.json``, one cursor per URL and site). A crash between the two re-reads
one page, which the import de-duplicates, so nothing is lost or doubled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from edge_agent.labels_csv import import_labels
from edge_agent.messages import LabelEvent
from edge_agent.store import LocalStore

PAGE_SIZE = 500
SOURCE = "cmms"


class LabelPullError(Exception):
    """The API could not be read (network, key, answer) or the cursor file is broken."""


@dataclass
class PullReport:
    """What a pull did: labels read, added, already present, skipped (not valid at the edge)."""

    read: int = 0
    added: int = 0
    already_present: int = 0
    skipped: list[str] = field(default_factory=list)
    cursor: int = 0


def cursor_path(store_path: Path) -> Path:
    """Where the cursors of a store are kept."""
    return store_path.with_name(store_path.name + ".labels-cursor.json")


def _cursor_key(url: str, site: str | None) -> str:
    return f"{url.rstrip('/')}|{site or '*'}"


def load_cursor(path: Path, url: str, site: str | None) -> int:
    """The saved cursor for (url, site), 0 when none."""
    if not path.exists():
        return 0
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get(_cursor_key(url, site), 0)
    except (OSError, ValueError, AttributeError) as exc:
        raise LabelPullError(f"cursor file {path} is unreadable: {exc}") from exc
    return int(value)


def save_cursor(path: Path, url: str, site: str | None, cursor: int) -> None:
    """Save the cursor for (url, site) atomically (write aside, fsync, rename)."""
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise LabelPullError(f"cursor file {path} is unreadable: {exc}") from exc
    data[_cursor_key(url, site)] = cursor
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _event(item: dict[str, Any]) -> LabelEvent:
    fields: dict[str, Any] = {
        "v": 1,
        "asset_id": item["asset_id"],
        "label": item["label"],
        "start_ns": item["start_ns"],
        "end_ns": item["end_ns"],
        "source": SOURCE,
    }
    if item.get("failure_code"):
        fields["failure_code"] = item["failure_code"]
    return LabelEvent.model_validate(fields)


def pull_labels(
    store: LocalStore,
    store_path: Path,
    url: str,
    api_key: str,
    *,
    site: str | None = None,
    client: httpx.Client | None = None,
) -> PullReport:
    """Pull every new label of ``site`` (or every site of the key) into ``store``.

    Raises
    ------
    LabelPullError
        The API answered with an error or could not be reached, or the cursor file is broken.
    """
    report = PullReport()
    path = cursor_path(store_path)
    after = load_cursor(path, url, site)
    own = client is None
    http = client or httpx.Client(timeout=30.0)
    try:
        while True:
            params: dict[str, str | int] = {"after": after, "limit": PAGE_SIZE}
            if site is not None:
                params["site"] = site
            try:
                answer = http.get(
                    f"{url.rstrip('/')}/v1/labels",
                    params=params,
                    headers={"Authorization": f"Bearer {api_key}"},
                )
            except httpx.HTTPError as exc:
                raise LabelPullError(f"cannot reach {url}: {exc}") from exc
            if answer.status_code != 200:
                detail = answer.text[:300]
                raise LabelPullError(f"{url} answered {answer.status_code}: {detail}")
            page = answer.json()
            labels = page.get("labels", [])
            if not labels:
                break
            events = []
            for item in labels:
                try:
                    events.append(_event(item))
                except (ValidationError, KeyError) as exc:
                    report.skipped.append(f"label {item.get('seq')}: {exc}")
            imported = import_labels(store, events)
            report.read += len(labels)
            report.added += imported.added
            report.already_present += imported.already_present
            after = int(page["next_cursor"])
            save_cursor(path, url, site, after)
    finally:
        if own:
            http.close()
    report.cursor = after
    return report
