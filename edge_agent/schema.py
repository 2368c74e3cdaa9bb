"""SQL schema of the local store, versioned with ``PRAGMA user_version``.

``MIGRATIONS[i]`` takes a store from version ``i`` to ``i + 1``; a new schema version appends
one entry and never edits an old one. Version 0 is an empty file.

Sequence numbers are unsigned 64-bit on the wire but SQLite integers are signed, so ``sensors``
stores ``seq - 2**63`` (:func:`seq_to_db`), which keeps the order.
"""

from __future__ import annotations

from typing import Final

SEQ_OFFSET: Final = 1 << 63

_V1: Final = """
CREATE TABLE windows (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a safe scoring cursor
    asset_id       TEXT    NOT NULL,
    sensor_id      TEXT    NOT NULL,
    channel        INTEGER NOT NULL CHECK (channel >= 0),
    start_ns       INTEGER NOT NULL,
    end_ns         INTEGER NOT NULL CHECK (end_ns > start_ns),
    sample_rate_hz REAL    NOT NULL CHECK (sample_rate_hz > 0),
    n_samples      INTEGER NOT NULL CHECK (n_samples > 0),
    samples        BLOB    NOT NULL CHECK (length(samples) = 4 * n_samples),  -- float32 LE, g
    created_ns     INTEGER NOT NULL
);
CREATE INDEX windows_asset_time ON windows (asset_id, start_ns);

CREATE TABLE labels (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    asset_id    TEXT    NOT NULL,
    sensor_id   TEXT,                                   -- NULL: every sensor of the asset
    label       TEXT    NOT NULL,
    start_ns    INTEGER NOT NULL,
    end_ns      INTEGER NOT NULL CHECK (end_ns > start_ns),
    source      TEXT    NOT NULL,
    received_ns INTEGER NOT NULL
);
-- a redelivered (QoS 1) or repeated label event is stored once
CREATE UNIQUE INDEX labels_event
    ON labels (asset_id, ifnull(sensor_id, ''), label, start_ns, end_ns);

CREATE TABLE scores (
    window_id           INTEGER NOT NULL REFERENCES windows (id) ON DELETE CASCADE,
    model_version       INTEGER NOT NULL,
    predicted           TEXT    NOT NULL,
    failure_probability REAL    NOT NULL,
    probabilities       TEXT    NOT NULL,               -- JSON object: class -> probability
    scored_ns           INTEGER NOT NULL,
    PRIMARY KEY (window_id, model_version)
) WITHOUT ROWID;

CREATE TABLE rejects (
    reason  TEXT    PRIMARY KEY,
    count   INTEGER NOT NULL,
    last_ns INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE sensors (
    asset_id    TEXT    NOT NULL,
    sensor_id   TEXT    NOT NULL,
    last_seq    INTEGER NOT NULL,                       -- seq - 2**63
    last_end_ns INTEGER NOT NULL,
    updated_ns  INTEGER NOT NULL,
    PRIMARY KEY (asset_id, sensor_id)
) WITHOUT ROWID;
"""

# v2: the samples of each channel's unfinished window, saved with every frame, so the samples
# of frames already acknowledged to the broker survive a restart of the agent.
_V2: Final = """
CREATE TABLE partials (
    asset_id       TEXT    NOT NULL,
    sensor_id      TEXT    NOT NULL,
    channel        INTEGER NOT NULL,
    start_ns       INTEGER NOT NULL,
    sample_rate_hz REAL    NOT NULL,
    samples        BLOB    NOT NULL,                    -- float32 little-endian, < one window
    PRIMARY KEY (asset_id, sensor_id, channel)
) WITHOUT ROWID;
"""

# v3: what the factory-floor agent keeps besides raw windows. Raw windows are the first to go
# when the disk budget is reached, then dead letters; the outbox and features only when nothing
# else is left; labels, alarms and baselines never (edge_agent.budget.EVICTION_ORDER).
_V3: Final = """
CREATE TABLE dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ns   INTEGER NOT NULL,
    topic         TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    detail        TEXT    NOT NULL,
    payload_bytes INTEGER NOT NULL,                     -- size of the whole message
    payload       BLOB    NOT NULL                      -- its first bytes (bounded)
);

CREATE TABLE features (
    window_id  INTEGER PRIMARY KEY,                     -- no foreign key: outlives the window
    asset_id   TEXT    NOT NULL,
    sensor_id  TEXT    NOT NULL,
    channel    INTEGER NOT NULL,
    start_ns   INTEGER NOT NULL,
    values_json TEXT   NOT NULL                         -- JSON object: feature -> value
);
CREATE INDEX features_asset_time ON features (asset_id, start_ns);

CREATE TABLE alarms (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ns     INTEGER NOT NULL,
    source    TEXT    NOT NULL,                         -- 'asset' or 'agent'
    subject   TEXT    NOT NULL,                         -- asset id, or the agent part
    state     TEXT    NOT NULL,                         -- normal/warning/alarm, or raised/cleared
    detail    TEXT    NOT NULL                          -- JSON object: the evidence
);
CREATE INDEX alarms_subject_time ON alarms (subject, ts_ns);

CREATE TABLE baselines (
    asset_id      TEXT    NOT NULL,
    model_version INTEGER NOT NULL,
    fitted_ns     INTEGER NOT NULL,
    n_windows     INTEGER NOT NULL,
    payload       BLOB    NOT NULL,                     -- serialised models.anomaly baseline
    PRIMARY KEY (asset_id, model_version)
) WITHOUT ROWID;

CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,       -- delivery order
    created_ns INTEGER NOT NULL,
    line       TEXT    NOT NULL                         -- one InfluxDB line-protocol point
);
"""

MIGRATIONS: Final[tuple[str, ...]] = (_V1, _V2, _V3)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def seq_to_db(seq: int) -> int:
    """Map an unsigned 64-bit sequence number onto SQLite's signed integers."""
    return seq - SEQ_OFFSET


def seq_from_db(value: int) -> int:
    """Inverse of :func:`seq_to_db`."""
    return value + SEQ_OFFSET
