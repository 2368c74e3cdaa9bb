"""Errors raised by the edge agent, and the exit codes of its processes.

Exception tree::

    EdgeAgentError              base class; ``exit_code`` says how the process ends
    ├── ConfigError             invalid settings or command line                    (exit 10)
    ├── StoreError              the local SQLite store cannot be opened or written  (exit 11)
    │   └── SchemaError         the store's schema is newer than this agent knows   (exit 11)
    ├── BrokerUnreachableError  no MQTT connection within the start-up deadline     (exit 12)
    ├── RegistryError           the model registry path is unusable                 (exit 13)
    ├── WorkerError             an agent worker process died unexpectedly           (exit 14)
    └── MessageRejected         one MQTT message refused (counted, never fatal)

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
