"""Supervisor of one site's edge agent: two worker processes and the agent's status topic.

:func:`run_agent` prepares the store (creating or migrating it once, before any worker opens
it), connects a status client whose last will is ``offline``, then starts the ingest and
inference workers as ``spawn`` processes. Once the ingest worker's subscriptions are
acknowledged the agent publishes ``online`` (both retained on ``fedpm/v1/{site}/agent/status``),
so a sensor or test that waits for ``online`` loses no frame. SIGTERM and SIGINT are forwarded
to both workers, which finish the message or batch in hand and exit. If a worker ends on its
own, the other is stopped too and the agent exits with the worker's code (a process manager
restarts the whole agent; the broker keeps the ingest session meanwhile).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent import topics
from edge_agent.errors import EdgeAgentError, ExitCode, RegistryError
from edge_agent.mqtt import connect, make_client
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
_KNOWN_CODES = {int(code) for code in ExitCode}


class _StatusClient:
    """Retained ``online`` once ingesting; the broker publishes the ``offline`` will otherwise."""

    def __init__(self, settings: AgentSettings) -> None:
        self._settings = settings
        self._online = False
        self._topic = topics.status_topic(settings.site_id)
        self._client = make_client(settings, settings.status_client_id)
        self._client.will_set(self._topic, topics.STATUS_OFFLINE, qos=1, retain=True)
        self._client.on_connect = self._on_connect

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            logger.error("broker refused the status connection: %s", reason_code)
        elif self._online:  # a reconnection replaced our status with the will
            client.publish(self._topic, topics.STATUS_ONLINE, qos=1, retain=True)

    def mark_online(self) -> None:
        """Publish ``online`` (retained) now and after every reconnection."""
        self._online = True
        self._client.publish(self._topic, topics.STATUS_ONLINE, qos=1, retain=True)

    def start(self) -> None:
        connect(self._client, self._settings, clean_start=True)
        self._client.loop_start()

    def stop(self) -> None:
        info = self._client.publish(self._topic, topics.STATUS_OFFLINE, qos=1, retain=True)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            info.wait_for_publish(timeout=2.0)
        self._client.loop_stop()
        self._client.disconnect()  # written at once: no loop thread any more


def _prepare(settings: AgentSettings) -> None:
    """Fail fast on a store or registry the workers could not use."""
    with LocalStore(settings.store_path) as store:
        logger.info(
            "store %s: schema %d, %d windows, %d labels",
            settings.store_path,
            store.schema_version(),
            store.count_windows(),
            store.count_labels(),
        )
    registry = settings.registry_dir
    if registry is not None and registry.exists() and not registry.is_dir():
        raise RegistryError(f"registry path {registry} is not a directory")


def run_worker(role: str, settings: AgentSettings, ready: Event) -> None:
    """Worker process target; imports the worker lazily so the supervisor stays light.

    The ingest worker sets ``ready`` once its subscriptions are acknowledged.
    """
    if role == "ingest":
        from edge_agent.ingest_worker import run_ingest

        run_ingest(settings, ready.set)
    else:
        from edge_agent.inference import run_inference

        run_inference(settings)


def _exit_code(proc: BaseProcess) -> ExitCode:
    code = proc.exitcode
    if code is not None and code in _KNOWN_CODES:
        return ExitCode(code)
    return ExitCode.WORKER_FAILED


def run_agent(settings: AgentSettings) -> int:
    """Run the agent until SIGTERM/SIGINT or a worker failure; return the exit code.

    Must be called from the main thread (it installs signal handlers, restored on return).
    """
    try:
        _prepare(settings)
        status = _StatusClient(settings)
        status.start()
    except EdgeAgentError as exc:
        logger.error("edge agent cannot start: %s", exc)
        return exc.exit_code

    ctx = multiprocessing.get_context("spawn")
    roles = ["ingest"] if settings.registry_dir is None else ["ingest", "inference"]
    ready = ctx.Event()
    workers: list[BaseProcess] = [
        ctx.Process(target=run_worker, args=(role, settings, ready), name=role) for role in roles
    ]
    if settings.registry_dir is None:
        logger.info("no registry configured: inference is off")
    stop_signal: list[int] = []
    signalled: set[int] = set()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop_signal.append(signum)
        for proc in workers:
            if proc.pid is not None and proc.exitcode is None:
                signalled.add(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    result = ExitCode.SUCCESS
    try:
        for proc in workers:
            proc.start()
        logger.info(
            "edge agent for site %s running: %s",
            settings.site_id,
            ", ".join(f"{p.name} (pid {p.pid})" for p in workers),
        )
        announced = False
        while not stop_signal:
            ended = wait([p.sentinel for p in workers], timeout=0.1 if not announced else 0.5)
            if not announced and ready.is_set():
                status.mark_online()
                announced = True
                logger.info("edge agent online: ingesting fedpm/v1/%s/...", settings.site_id)
            if ended and not stop_signal:
                failed = next(p for p in workers if p.sentinel in ended)
                failed.join()
                result = _exit_code(failed)
                logger.error("worker %s ended with code %s; stopping", failed.name, failed.exitcode)
                break
        if stop_signal:
            logger.info("stopping on signal %d", stop_signal[0])
    finally:
        _stop_workers(workers, already_signalled=signalled)
        status.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # a worker still importing when the signal came has no handler yet and dies of it
    clean = {0, None, -signal.SIGTERM, -signal.SIGINT} if stop_signal else {0, None}
    if result == ExitCode.SUCCESS and any(p.exitcode not in clean for p in workers):
        result = ExitCode.WORKER_FAILED
    logger.info("edge agent stopped (exit %d)", int(result))
    return int(result)


def _stop_workers(workers: list[BaseProcess], *, already_signalled: set[int]) -> None:
    """SIGTERM the workers not signalled yet, wait for all, kill those that hang."""
    started = [proc for proc in workers if proc.pid is not None]
    for proc in started:
        if proc.pid not in already_signalled and proc.exitcode is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in started:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.exitcode is None:
            logger.warning("worker %s did not stop in %g s; killing it", proc.name, STOP_TIMEOUT_S)
            proc.kill()
            proc.join()
