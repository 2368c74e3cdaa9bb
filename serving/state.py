"""The serving API's own state: tenants' API keys and assets, behind one storage interface.

:class:`StateStore` is what the routes use; :class:`SqliteStateStore` implements it on one
SQLite file (WAL), so one service runs alone with nothing else to install. A shared database
for several replicas implements the same protocol (docs/serving-security.md).

API keys are ``fpm_<key id>_<secret>``: 12 hex digits of id, then 32 random bytes in URL-safe
base64. Only the SHA-256 of the whole key is stored. A fast hash is right here, unlike for
passwords: the secret has 256 bits of entropy, so there is nothing to guess, and every request
verifies a key. The id is stored in clear so a key can be listed and revoked without its secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from serving import history
from serving.errors import ServingError
from serving.history import HistoryPoint, StoredHealthBaseline
from serving.integration_sqlite import SqliteIntegrationMixin
from serving.integration_tables import FAILURE_CODES_SCHEMA, INTEGRATION_SCHEMA
from serving.integration_types import IntegrationStore

KEY_PREFIX = "fpm"
_KEY_RE = re.compile(r"^fpm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
#: identifiers of tenants, sites and assets: what an ERP key field holds, nothing that needs
#: escaping in a URL path segment or a log line
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
SCHEMA_VERSION = 4


class StateError(ServingError):
    """State that cannot be stored or read (bad names, unknown keys, a broken file)."""


class Permission(StrEnum):
    """What an API key may do, beyond reading its tenant's models and assets."""

    PREDICT = "predict"
    MANAGE_ASSETS = "manage_assets"
    MANAGE_WEBHOOKS = "manage_webhooks"


@dataclass(frozen=True)
class ApiKey:
    """An API key's scope (never its secret).

    ``sites`` empty means every site of the tenant; ``rate_per_minute`` 0 means the service's
    default limit.
    """

    key_id: str
    tenant: str
    permissions: frozenset[Permission]
    sites: frozenset[str] = frozenset()
    rate_per_minute: int = 0
    label: str = ""
    created_at: float = 0.0
    revoked_at: float | None = None

    def allows_site(self, site: str) -> bool:
        """Whether this key may act on ``site`` of its tenant."""
        return not self.sites or site in self.sites


@dataclass(frozen=True)
class Asset:
    """A monitored asset: where it is, and what the ISO zone and bearing evidence need."""

    tenant: str
    asset_id: str
    site: str
    machine_group: int = 2  # ISO 10816-3 / 20816-3 group (1: large, 2: medium machines)
    mounting: str = "rigid"  # "rigid" or "flexible" foundation
    bearing: str | None = None  # catalogue name (6205) or "b=9,d=7.94,D=39.04,angle=0"
    nominal_rpm: float | None = None
    description: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredBaseline:
    """An asset's healthy baseline (``models.anomaly.AnomalyBaseline`` JSON) and its model."""

    tenant: str
    asset_id: str
    model_sha256: str
    model_version: str
    document: str
    windows: int
    false_alarm_rate: float
    fitted_at: float


class StateStore(IntegrationStore, Protocol):
    """Storage of the serving API's state; every method is safe to call from many threads."""

    def create_key(
        self,
        tenant: str,
        permissions: Iterable[Permission],
        *,
        sites: Iterable[str] = (),
        rate_per_minute: int = 0,
        label: str = "",
    ) -> tuple[ApiKey, str]:
        """Create a key; return its scope and the key itself, which is not stored."""

    def authenticate(self, presented: str) -> ApiKey | None:
        """The live key ``presented`` is, or None (malformed, unknown, wrong or revoked)."""

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key; it fails from the next request on."""

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Keys (revoked ones too), of one tenant or all."""

    def put_asset(self, asset: Asset) -> Asset:
        """Create or replace an asset; return it with its timestamps."""

    def get_asset(self, tenant: str, asset_id: str) -> Asset | None:
        """One asset of a tenant, or None."""

    def list_assets(self, tenant: str, sites: Iterable[str] = ()) -> list[Asset]:
        """A tenant's assets, limited to ``sites`` when given."""

    def put_baseline(self, baseline: StoredBaseline) -> None:
        """Store an asset's baseline, replacing the previous one."""

    def get_baseline(self, tenant: str, asset_id: str) -> StoredBaseline | None:
        """An asset's baseline, or None."""

    def add_history_point(
        self, point: HistoryPoint, max_points: int = history.HISTORY_MAX_POINTS
    ) -> history.Series:
        """Store a point of an asset's history; return the points comparable with it.

        A point at the same time as a stored one replaces it; the history is kept within
        ``max_points`` (:func:`serving.history.thinned`).
        """

    def get_history(self, tenant: str, asset_id: str) -> list[HistoryPoint]:
        """An asset's history, oldest first."""

    def put_health_baseline(self, baseline: StoredHealthBaseline) -> None:
        """Store an asset's health-indicator baseline, replacing the previous one."""

    def get_health_baseline(self, tenant: str, asset_id: str) -> StoredHealthBaseline | None:
        """An asset's health-indicator baseline, or None."""

    def close(self) -> None:
        """Release the storage."""


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid identifier of ``kind``, else raise StateError."""
    if not NAME_RE.fullmatch(value):
        raise StateError(
            f"{kind} {value!r} is not a valid identifier: 1-128 characters, letters, digits and"
            " . _ : / - (starting with a letter or digit)"
        )
    return value


def hash_key(presented: str) -> str:
    """SHA-256 (hex) of a whole API key, as stored."""
    return hashlib.sha256(presented.encode()).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_sha256 TEXT NOT NULL,
    permissions TEXT NOT NULL,
    sites TEXT NOT NULL,
    rate_per_minute INTEGER NOT NULL,
    label TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant);
CREATE TABLE IF NOT EXISTS assets (
    tenant TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    site TEXT NOT NULL,
    machine_group INTEGER NOT NULL,
    mounting TEXT NOT NULL,
    bearing TEXT,
    nominal_rpm REAL,
    description TEXT NOT NULL,
    attributes TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, asset_id)
);
CREATE TABLE IF NOT EXISTS baselines (
    tenant TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_version TEXT NOT NULL,
    document TEXT NOT NULL,
    windows INTEGER NOT NULL,
    false_alarm_rate REAL NOT NULL,
    fitted_at REAL NOT NULL,
    PRIMARY KEY (tenant, asset_id),
    FOREIGN KEY (tenant, asset_id) REFERENCES assets (tenant, asset_id)
);
"""


class SqliteStateStore(SqliteIntegrationMixin):
    """:class:`StateStore` on one SQLite file (WAL; one connection guarded by a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state store {path} is unusable: {exc}") from exc
        if row is None:
            self._conn.execute("INSERT INTO meta VALUES ('schema', '1')")
        found = 1 if row is None else int(row[0])
        if found > SCHEMA_VERSION:
            raise StateError(
                f"state store {path} has schema {found}; this version reads {SCHEMA_VERSION}"
            )
        if found < SCHEMA_VERSION:
            try:
                _migrate(self._conn, found)
            except sqlite3.DatabaseError as exc:
                raise StateError(f"state store {path}: migration failed: {exc}") from exc
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, args).fetchall())

    # --- keys ---------------------------------------------------------------------------

    def create_key(
        self,
        tenant: str,
        permissions: Iterable[Permission],
        *,
        sites: Iterable[str] = (),
        rate_per_minute: int = 0,
        label: str = "",
    ) -> tuple[ApiKey, str]:
        """Create a key; return its scope and the key itself, which is not stored."""
        check_name("tenant", tenant)
        perms = frozenset(Permission(p) for p in permissions)
        site_set = frozenset(check_name("site", s) for s in sites)
        if rate_per_minute < 0:
            raise StateError(f"rate_per_minute must be >= 0, got {rate_per_minute}")
        key_id = secrets.token_hex(6)
        presented = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id, tenant, perms, site_set, rate_per_minute, label, time.time())
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    key_id,
                    tenant,
                    hash_key(presented),
                    ",".join(sorted(perms)),
                    ",".join(sorted(site_set)),
                    rate_per_minute,
                    label,
                    key.created_at,
                ),
            )
        return key, presented

    def authenticate(self, presented: str) -> ApiKey | None:
        """The live key ``presented`` is, or None (malformed, unknown, wrong or revoked)."""
        match = _KEY_RE.fullmatch(presented)
        if match is None:
            return None
        rows = self._query("SELECT * FROM api_keys WHERE key_id = ?", (match.group(1),))
        if not rows:
            return None
        row = rows[0]
        if not hmac.compare_digest(str(row[2]), hash_key(presented)) or row[8] is not None:
            return None
        return _key(row)

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key; it fails from the next request on."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            if cur.rowcount == 0:
                raise StateError(f"no live API key with id {key_id!r}")

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Keys (revoked ones too), of one tenant or all, oldest first."""
        if tenant is None:
            rows = self._query("SELECT * FROM api_keys ORDER BY created_at")
        else:
            rows = self._query(
                "SELECT * FROM api_keys WHERE tenant = ? ORDER BY created_at", (tenant,)
            )
        return [_key(r) for r in rows]

    # --- assets -------------------------------------------------------------------------

    def put_asset(self, asset: Asset) -> Asset:
        """Create or replace an asset; return it with its timestamps."""
        check_name("tenant", asset.tenant)
        check_name("asset id", asset.asset_id)
        check_name("site", asset.site)
        now = time.time()
        with self._tx() as conn:
            old = conn.execute(
                "SELECT created_at FROM assets WHERE tenant = ? AND asset_id = ?",
                (asset.tenant, asset.asset_id),
            ).fetchone()
            created = float(old[0]) if old else now
            conn.execute(
                "INSERT OR REPLACE INTO assets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    asset.tenant,
                    asset.asset_id,
                    asset.site,
                    asset.machine_group,
                    asset.mounting,
                    asset.bearing,
                    asset.nominal_rpm,
                    asset.description,
                    json.dumps(asset.attributes, sort_keys=True),
                    created,
                    now,
                ),
            )
        return Asset(**{**asset.__dict__, "created_at": created, "updated_at": now})

    def get_asset(self, tenant: str, asset_id: str) -> Asset | None:
        """One asset of a tenant, or None."""
        rows = self._query(
            "SELECT * FROM assets WHERE tenant = ? AND asset_id = ?", (tenant, asset_id)
        )
        return _asset(rows[0]) if rows else None

    def list_assets(self, tenant: str, sites: Iterable[str] = ()) -> list[Asset]:
        """A tenant's assets, limited to ``sites`` when given, by asset id."""
        wanted = set(sites)
        rows = self._query("SELECT * FROM assets WHERE tenant = ? ORDER BY asset_id", (tenant,))
        assets = [_asset(r) for r in rows]
        return [a for a in assets if not wanted or a.site in wanted]

    # --- baselines ----------------------------------------------------------------------

    def put_baseline(self, baseline: StoredBaseline) -> None:
        """Store an asset's baseline, replacing the previous one."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO baselines VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    baseline.tenant,
                    baseline.asset_id,
                    baseline.model_sha256,
                    baseline.model_version,
                    baseline.document,
                    baseline.windows,
                    baseline.false_alarm_rate,
                    baseline.fitted_at,
                ),
            )

    def get_baseline(self, tenant: str, asset_id: str) -> StoredBaseline | None:
        """An asset's baseline, or None."""
        rows = self._query(
            "SELECT * FROM baselines WHERE tenant = ? AND asset_id = ?", (tenant, asset_id)
        )
        if not rows:
            return None
        r = rows[0]
        return StoredBaseline(
            tenant=str(r[0]),
            asset_id=str(r[1]),
            model_sha256=str(r[2]),
            model_version=str(r[3]),
            document=str(r[4]),
            windows=int(str(r[5])),
            false_alarm_rate=float(str(r[6])),
            fitted_at=float(str(r[7])),
        )

    # --- history (serving.history) -------------------------------------------------------

    def add_history_point(
        self, point: HistoryPoint, max_points: int = history.HISTORY_MAX_POINTS
    ) -> history.Series:
        """Store a point of an asset's history; return the points comparable with it.

        A point at the same time as a stored one replaces it; the history is kept within
        ``max_points`` (:func:`serving.history.thinned`).
        """
        with self._tx() as conn:
            return history.insert_point(conn, point, max_points)

    def get_history(self, tenant: str, asset_id: str) -> list[HistoryPoint]:
        """An asset's history, oldest first."""
        with self._lock:
            return history.select_history(self._conn, tenant, asset_id)

    def put_health_baseline(self, baseline: StoredHealthBaseline) -> None:
        """Store an asset's health-indicator baseline, replacing the previous one."""
        with self._tx() as conn:
            history.replace_health_baseline(conn, baseline)

    def get_health_baseline(self, tenant: str, asset_id: str) -> StoredHealthBaseline | None:
        """An asset's health-indicator baseline, or None."""
        with self._lock:
            return history.select_health_baseline(self._conn, tenant, asset_id)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()


_MIGRATIONS: dict[int, str] = {
    2: history.HISTORY_SCHEMA,  # per-asset condition history and health baselines
    3: INTEGRATION_SCHEMA,  # webhooks, rules, maintenance requests, outbox, labels
    4: FAILURE_CODES_SCHEMA,  # each tenant's own failure codes
}
"""SQL that brings a store from the version before to the key's; each step idempotent
(``CREATE ... IF NOT EXISTS``), so a step interrupted half-way is simply run again."""


def _migrate(conn: sqlite3.Connection, found: int) -> None:
    """Run the steps from schema ``found`` to :data:`SCHEMA_VERSION` in one transaction."""
    steps = "".join(_MIGRATIONS[v] for v in range(found + 1, SCHEMA_VERSION + 1))
    conn.executescript(f"BEGIN IMMEDIATE;{steps}")  # the script leaves the transaction open
    try:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _split(text: object) -> list[str]:
    return [p for p in str(text).split(",") if p]


def _key(row: tuple[object, ...]) -> ApiKey:
    return ApiKey(
        key_id=str(row[0]),
        tenant=str(row[1]),
        permissions=frozenset(Permission(p) for p in _split(row[3])),
        sites=frozenset(_split(row[4])),
        rate_per_minute=int(str(row[5])),
        label=str(row[6]),
        created_at=float(str(row[7])),
        revoked_at=None if row[8] is None else float(str(row[8])),
    )


def _asset(row: tuple[object, ...]) -> Asset:
    return Asset(
        tenant=str(row[0]),
        asset_id=str(row[1]),
        site=str(row[2]),
        machine_group=int(str(row[3])),
        mounting=str(row[4]),
        bearing=None if row[5] is None else str(row[5]),
        nominal_rpm=None if row[6] is None else float(str(row[6])),
        description=str(row[7]),
        attributes=dict(json.loads(str(row[8]))),
        created_at=float(str(row[9])),
        updated_at=float(str(row[10])),
    )
