"""Run the serving API: ``python -m serving --registry DIR --port N``; keys: ``... keys``.

Options override the ``FEDPM_SERVE_*`` environment variables. Exit codes: 0 after a clean
shutdown, 2 for bad command-line arguments, 40 for invalid settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from pydantic_settings import SettingsError

from models.errors import FedPMModelsError
from serving.app import create_app
from serving.metrics import MULTIPROC_ENV
from serving.settings import ServeSettings

EXIT_OK = 0
EXIT_BAD_SETTINGS = 40

logger = logging.getLogger("serving")


class JsonFormatter(logging.Formatter):
    """One JSON object per log record."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: ServeSettings) -> None:
    """Configure the root logger once for this process (uvicorn's loggers propagate to it)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving", description="FedPM failure-prediction REST API."
    )
    parser.add_argument("--registry", dest="registry_dir", help="model registry directory")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8000; 0 picks one)")
    parser.add_argument("--onnx-threads", dest="onnx_threads", type=int)
    parser.add_argument("--state", dest="state_path", help="state file: API keys, assets")
    parser.add_argument(
        "--verify-key",
        dest="model_verify_key",
        help="Ed25519 public key (PEM) of model signatures",
    )
    parser.add_argument(
        "--model-poll-s", dest="model_poll_s", type=float, help="registry check interval (s)"
    )
    parser.add_argument(
        "--log-level", dest="log_level", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    return parser


def worker_app() -> FastAPI:
    """The application of one worker process (``--workers`` above 1).

    Its settings come from the environment, where :func:`main` has written the options.
    """
    settings = ServeSettings()
    configure_logging(settings)
    return create_app(settings)


def _prepare_multiprocess_metrics(overrides: dict[str, Any]) -> str | None:
    """Before workers start: options into ``FEDPM_SERVE_*``, an empty metrics folder.

    Returns the temporary folder made here (to remove at exit), ``None`` when
    ``PROMETHEUS_MULTIPROC_DIR`` was given (its old files are removed).
    """
    for name, value in overrides.items():
        os.environ[f"FEDPM_SERVE_{name.upper()}"] = str(value)
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):  # files of an earlier run would add up
            stale.unlink()
        return None
    made = tempfile.mkdtemp(prefix="fedpm-serving-metrics-")
    os.environ[MULTIPROC_ENV] = made
    return made


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, configure logging and serve until interrupted; return the exit code.

    ``keys ...`` manages API keys instead (:mod:`serving.keys_cli`).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["keys"]:
        from serving.keys_cli import main as keys_main

        return keys_main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = ServeSettings(**overrides)
    except (ValidationError, SettingsError) as exc:  # SettingsError: an env value not parsed
        parser.exit(EXIT_BAD_SETTINGS, f"invalid settings: {exc}\n")
    configure_logging(settings)
    logger.info(
        "serving registry %s on http://%s:%d", settings.registry_dir, settings.host, settings.port
    )
    made = None
    if settings.workers > 1 or os.environ.get(MULTIPROC_ENV):
        made = _prepare_multiprocess_metrics(overrides)  # before any metric exists
    try:
        app = create_app(settings)  # in the parent too: bad settings fail here, once
    except FedPMModelsError as exc:  # an unreadable verification key, say
        parser.exit(EXIT_BAD_SETTINGS, f"invalid settings: {exc}\n")
    try:
        uvicorn.run(
            "serving.__main__:worker_app" if settings.workers > 1 else app,
            factory=settings.workers > 1,
            workers=settings.workers if settings.workers > 1 else None,
            host=settings.host,
            port=settings.port,
            log_config=None,
            log_level=settings.log_level.lower(),
            server_header=False,
        )
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
