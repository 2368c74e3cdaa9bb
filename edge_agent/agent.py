"""Supervisor of one site's edge agent: worker processes, SuperNode, metrics, status topic.

:func:`run_agent` prepares the store (creating or migrating it once, before any worker opens
it), connects a status client whose last will is ``offline``, then starts the ingest and
inference workers as ``spawn`` processes. Once the ingest worker's subscriptions are
acknowledged the agent publishes ``online`` (both retained on ``fedpm/v1/{site}/agent/status``),
so a sensor or test that waits for ``online`` loses no frame. SIGTERM and SIGINT are forwarded
to both workers, which finish the message or batch in hand and exit. If a worker ends on its
own, the other is stopped too and the agent exits with the worker's code (a process manager
restarts the whole agent; the broker keeps the ingest session meanwhile).

With ``superlink`` set, the supervisor also keeps a Flower SuperNode running beside the workers
(:mod:`edge_agent.supernode`: restarted with a capped backoff whenever it exits, not a reason
to stop the agent); with ``metrics_port`` set, it serves Prometheus metrics read from the store
(:mod:`edge_agent.metrics`). Both stop with the agent.
"""

from __future__ import annotations

import contextlib
import json
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
from edge_agent.errors import EdgeAgentError, ExitCode, RegistryError, StoreError
from edge_agent.metrics import MetricsServer
from edge_agent.mqtt import connect, make_client
from edge_agent.records import AlarmRecord
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore
from edge_agent.supernode import SuperNodeSupervisor

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0  # above the telemetry worker's 10 s write timeout
_KNOWN_CODES = {int(code) for code in ExitCode}


class _AlarmRelay:
    """Publish the agent alarms the workers record in the store (disk low, corrupt store...).

    Each poll reads the rows after the last one published and sends the newest state of each
    subject, retained, so a late subscriber sees every condition's current state.
    """

    def __init__(self, settings: AgentSettings, status: _StatusClient) -> None:
        self._store = LocalStore(settings.store_path, readonly=True)
        self._status = status
        self._cursor = 0

    def poll(self) -> None:
        try:
            rows = self._store.agent_alarms(self._cursor)
        except StoreError as exc:
            logger.warning("cannot read agent alarms: %s", exc)
            return
        latest: dict[str, AlarmRecord] = {}
        for row in rows:
            latest[row.subject] = row
        for alarm in latest.values():
            log = logger.warning if alarm.state == "raised" else logger.info
            log("agent alarm %s %s: %s", alarm.subject, alarm.state, dict(alarm.detail))
            self._status.publish_alarm(alarm)
        if rows:
            self._cursor = rows[-1].id

    def close(self) -> None:
        self._store.close()


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

    def publish_alarm(self, alarm: AlarmRecord) -> None:
        """Publish an agent condition's latest state, retained, on its own topic."""
        payload = json.dumps(
            {
                "v": 1,
                "site": self._settings.site_id,
                "subject": alarm.subject,
                "state": alarm.state,
                "ts_ns": alarm.ts_ns,
                "detail": dict(alarm.detail),
            },
            separators=(",", ":"),
        )
        topic = topics.agent_alarm_topic(self._settings.site_id, alarm.subject)
        self._client.publish(topic, payload, qos=1, retain=True)

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
    """Check the store (a corrupt one is quarantined) and the registry before any worker."""
    with LocalStore.from_settings(settings, checked=True) as store:
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


def worker_roles(settings: AgentSettings) -> list[str]:
    """The worker processes ``settings`` call for, in start order (``ingest`` first)."""
    roles = ["ingest"]
    if settings.models_enabled:
        roles.append("inference")
    if settings.influx_url is not None:
        roles.append("telemetry")
    return roles


class _Sidecars:
    """What runs beside the workers in the supervisor: the SuperNode and the metrics server."""

    def __init__(self, settings: AgentSettings) -> None:
        self.supernode = None if settings.superlink is None else SuperNodeSupervisor(settings)
        restarts = None if self.supernode is None else (lambda: self.supernode_restarts)
        self.metrics = (
            None
            if settings.metrics_port is None
            else MetricsServer(settings, supernode_restarts=restarts)
        )

    @property
    def supernode_restarts(self) -> int:
        return 0 if self.supernode is None else self.supernode.restarts

    def start(self) -> None:
        """Start both; on failure stop what started and re-raise."""
        try:
            if self.metrics is not None:
                self.metrics.start()
            if self.supernode is not None:
                self.supernode.start()
        except BaseException:
            self.stop()
            raise

    def request_stop(self) -> None:
        if self.supernode is not None:
            self.supernode.request_stop()

    def stop(self) -> None:
        if self.supernode is not None:
            self.supernode.stop()
        if self.metrics is not None:
            self.metrics.stop()


def run_worker(role: str, settings: AgentSettings, ready: Event) -> None:
    """Worker process target; imports the worker lazily so the supervisor stays light.

    The ingest worker sets ``ready`` once its subscriptions are acknowledged.
    """
    if role == "ingest":
        from edge_agent.ingest_worker import run_ingest

        run_ingest(settings, ready.set)
    elif role == "inference":
        from edge_agent.inference import run_inference

        run_inference(settings)
    elif role == "telemetry":
        from edge_agent.telemetry import run_telemetry

        run_telemetry(settings)
    else:
        raise ValueError(f"unknown worker role {role!r}")


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
        sidecars = _Sidecars(settings)
        status = _StatusClient(settings)
        status.start()
        alarms = _AlarmRelay(settings, status)
    except EdgeAgentError as exc:
        logger.error("edge agent cannot start: %s", exc)
        return exc.exit_code
    try:
        sidecars.start()
    except EdgeAgentError as exc:
        logger.error("edge agent cannot start: %s", exc)
        status.stop()
        return exc.exit_code

    ctx = multiprocessing.get_context("spawn")
    roles = worker_roles(settings)
    ready = ctx.Event()
    workers: list[BaseProcess] = [
        ctx.Process(target=run_worker, args=(role, settings, ready), name=role) for role in roles
    ]
    if not settings.models_enabled:
        logger.info("no model source configured: inference is off")
    stop_signal: list[int] = []
    signalled: set[int] = set()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop_signal.append(signum)
        sidecars.request_stop()
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
            if announced:
                alarms.poll()
            if ended and not stop_signal:
                failed = next(p for p in workers if p.sentinel in ended)
                failed.join()
                result = _exit_code(failed)
                logger.error("worker %s ended with code %s; stopping", failed.name, failed.exitcode)
                break
        if stop_signal:
            logger.info("stopping on signal %d", stop_signal[0])
    finally:
        sidecars.request_stop()
        _stop_workers(workers, already_signalled=signalled)
        sidecars.stop()
        alarms.poll()
        alarms.close()
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
