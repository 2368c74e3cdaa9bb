"""Errors raised by the edge agent, and the exit codes of its processes.

Exception tree::

    EdgeAgentError              base class; ``exit_code`` says how the process ends
    ├── ConfigError             invalid settings or command line                    (exit 10)
    ├── StoreError              the local SQLite store cannot be opened or written  (exit 11)
    │   ├── SchemaError         the store's schema is newer than this agent knows   (exit 11)
    │   └── StoreFullError      a write does not fit the disk budget or the disk    (exit 11)
    ├── BrokerUnreachableError  no MQTT connection within the start-up deadline     (exit 12)
    ├── RegistryError           the model registry path is unusable                 (exit 13)
    ├── WorkerError             an agent worker process died unexpectedly           (exit 14)
    ├── MessageRejected         one MQTT message refused (counted, never fatal)
    ├── LabelImportError        a labels CSV has bad rows (nothing imported)        (CLI exit 1)
    └── SinkError               the telemetry sink failed (retried, never fatal)
        ├── SinkUnavailableError  down, timing out, 5xx or 429: retried with backoff
        ├── SinkRefusedError      401/403/404: credentials or bucket wrong, retried slowly
        └── SinkRejectedError     400/413/422: a point refused, isolated to the dead letters

``LabelImportError`` lives in :mod:`edge_agent.labels_csv` and the sink errors in
:mod:`edge_agent.telemetry`, beside the code that raises them.

Third-party errors (``sqlite3.Error``, ``OSError`` from paho, ``models.errors.FrameError``)
are translated into these at the module that meets them (``raise StoreError(...) from exc``).
The edge agent owns the exit codes 10-19 (Flower's ``common/exit`` keeps a range per role);
0 is a clean stop, including one asked for by SIGTERM or SIGINT.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit status of ``python -m edge_agent`` and of its worker processes."""

    SUCCESS = 0
    CONFIG_ERROR = 10
    STORE_ERROR = 11
    BROKER_UNREACHABLE = 12
    REGISTRY_ERROR = 13
    WORKER_FAILED = 14


class EdgeAgentError(Exception):
    """Base class of every error raised by ``edge_agent``."""

    exit_code: ExitCode = ExitCode.WORKER_FAILED


class ConfigError(EdgeAgentError):
    """Invalid settings or command-line arguments."""

    exit_code = ExitCode.CONFIG_ERROR


class StoreError(EdgeAgentError):
    """The local store cannot be opened, read or written."""

    exit_code = ExitCode.STORE_ERROR


class SchemaError(StoreError):
    """The store was written by a newer agent (its ``user_version`` is unknown here)."""


class StoreFullError(StoreError):
    """A write cannot be made within the store's disk budget, or the disk itself is full.

    Nothing of the refused transaction is kept; the caller must not acknowledge what it held.
    """


class BrokerUnreachableError(EdgeAgentError):
    """No connection to the MQTT broker could be made before the start-up deadline."""

    exit_code = ExitCode.BROKER_UNREACHABLE


class RegistryError(EdgeAgentError):
    """The configured model registry path cannot be used at all."""

    exit_code = ExitCode.REGISTRY_ERROR


class WorkerError(EdgeAgentError):
    """An agent worker process (ingest or inference) ended unexpectedly."""

    exit_code = ExitCode.WORKER_FAILED


class MessageRejected(EdgeAgentError):  # noqa: N818 - a verdict on a message, not a failure
    """One MQTT message was refused; ``reason`` is a short tag for the rejects counter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
