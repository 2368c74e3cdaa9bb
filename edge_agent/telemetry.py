"""Telemetry worker: drain the store's outbox into InfluxDB, in order, through outages.

The worker reads the oldest ``telemetry_batch`` points of the :class:`~edge_agent.outbox.Outbox`
in id order, writes them with influxdb-client's synchronous write API and deletes them only
once the sink answered 2xx, so a point is never lost to a crash, a restart or an outage.
While the sink or the network is down it retries the same batch with capped exponential
backoff (jittered; no busy loop), so the order is kept. A batch the sink refuses as malformed
(HTTP 400, 413 or 422) is bisected until the refused point is alone; that point goes to the
store's ``dead_letters`` (reason ``telemetry_rejected``) and the rest is delivered. Credentials
refused (401, 403) or an unknown org or bucket (404) are logged as errors and retried at the
slowest pace, since only an operator can fix them.

Delivery is *at least once*: a crash between the sink's acknowledgement and the delete resends
one batch. InfluxDB overwrites a point with the same series and timestamp, so that is harmless
there; ``docs/telemetry.md`` says what VictoriaMetrics does.

The sink is a seam (:class:`TelemetrySink`): :class:`InfluxSink` is the real adapter and
:class:`MemorySink` its in-memory twin.
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from edge_agent.errors import EdgeAgentError, ExitCode
from edge_agent.logs import Throttle, configure_logging
from edge_agent.outbox import Outbox
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore

logger = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 60.0
IDLE_POLL_S = 0.5
WRITE_TIMEOUT_S = 10.0
_REJECTED_STATUS = frozenset({400, 413, 422})
_REFUSED_STATUS = frozenset({401, 403, 404})


class SinkError(EdgeAgentError):
    """The telemetry sink did not take a batch (never fatal to the worker)."""


class SinkUnavailableError(SinkError):
    """The sink or the network is down, overloaded or failing (retry with backoff).

    ``retry_after_s`` is the sink's own ``Retry-After`` hint, when it gave one.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SinkRefusedError(SinkError):
    """The sink refuses our credentials, org or bucket (401/403/404): retry slowly."""


class SinkRejectedError(SinkError):
    """The sink refuses the batch itself as malformed or too large (400/413/422)."""


class TelemetrySink(Protocol):
    """Where telemetry points go: one call writes one batch, or raises a :class:`SinkError`."""

    def write(self, lines: Sequence[str]) -> None:
        """Write line-protocol points; return only once the sink acknowledged them all."""

    def close(self) -> None:
        """Release connections."""


class InfluxSink:
    """InfluxDB v2 write API (``/api/v2/write``) through influxdb-client, synchronously.

    Parameters
    ----------
    url, org, bucket, token
        Where to write (any server speaking the v2 write API, such as VictoriaMetrics).
    timeout_s
        Per-request timeout; a request that times out is retried like an outage.
    """

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str,
        token: str | None = None,
        *,
        timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.url = url
        self._org = org
        self._bucket = bucket
        self._client = InfluxDBClient(url=url, token=token or "", org=org, timeout=timeout_s * 1e3)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: Sequence[str]) -> None:
        """Write ``lines``; raise :class:`SinkError` subclasses on failure.

        Raises
        ------
        SinkRejectedError
            HTTP 400, 413 or 422.
        SinkRefusedError
            HTTP 401, 403 or 404.
        SinkUnavailableError
            Any other HTTP error, a timeout or a network error.
        """
        try:
            # string records carry nanosecond timestamps: the client's default precision
            self._write.write(bucket=self._bucket, org=self._org, record=list(lines))
        except ApiException as exc:
            raise _http_error(exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkUnavailableError(f"{self.url} unreachable: {exc}") from exc

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()  # type: ignore[no-untyped-call]


def _http_error(exc: ApiException) -> SinkError:
    status = int(exc.status or 0)
    raw_body = exc.body if exc.body is not None else b""
    body = raw_body.decode(errors="replace") if isinstance(raw_body, bytes) else str(raw_body)
    message = f"HTTP {status} {exc.reason}: {body.strip()[:500]}"
    if status in _REJECTED_STATUS:
        return SinkRejectedError(message)
    if status in _REFUSED_STATUS:
        return SinkRefusedError(message)
    retry_after = None
    headers: Mapping[str, str] = exc.headers or {}
    raw = headers.get("Retry-After")
    if raw is not None and raw.strip().isdigit():
        retry_after = float(raw)
    return SinkUnavailableError(message, retry_after)


@dataclass
class MemorySink:
    """In-memory twin of :class:`InfluxSink` (for the demo and for tests).

    ``lines`` holds every point written, in order. While ``down`` is true every write raises
    :class:`SinkUnavailableError`; a batch holding a line for which ``rejects`` is true is refused
    whole with :class:`SinkRejectedError` (as InfluxDB does on a parse error).
    """

    lines: list[str] = field(default_factory=list)
    down: bool = False
    rejects: Callable[[str], bool] = field(default=lambda line: False)

    def write(self, lines: Sequence[str]) -> None:
        """Append ``lines`` to :attr:`lines`, or raise as configured."""
        if self.down:
            raise SinkUnavailableError("memory sink is down")
        bad = [line for line in lines if self.rejects(line)]
        if bad:
            raise SinkRejectedError(f"unable to parse {bad[0]!r}")
        self.lines.extend(lines)

    def close(self) -> None:
        """Nothing to release."""


class Backoff:
    """Capped exponential backoff with jitter: ``initial_s * 2**n``, at most ``max_s``.

    Each delay is drawn uniformly from its upper half, so many agents coming back at once do
    not retry in step.

    Examples
    --------
    >>> b = Backoff(1.0, 4.0)
    >>> [0.5 <= b.next_delay() <= 1.0, 1.0 <= b.next_delay() <= 2.0, b.next_delay() <= 4.0]
    [True, True, True]
    """

    def __init__(self, initial_s: float = INITIAL_BACKOFF_S, max_s: float = MAX_BACKOFF_S) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {initial_s} and {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and count one more failure)."""
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(self.failures, 60))
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """The sink answered: start again from ``initial_s``."""
        self.failures = 0


class TelemetryForwarder:
    """Move points from an outbox to a sink, in id order, each at least once.

    Parameters
    ----------
    outbox
        The queue (its store must be writable and owned by this thread).
    sink
        Where the points go.
    batch
        Points per write (``telemetry_batch``).
    backoff
        Delays between attempts while the sink fails.
    idle_s
        How long to wait before looking at an empty outbox again.

    Attributes
    ----------
    delivered, rejected, failed_attempts
        Points the sink acknowledged, points it refused (now dead letters), and writes that
        failed for want of a sink, since this forwarder started.
    """

    def __init__(
        self,
        outbox: Outbox,
        sink: TelemetrySink,
        *,
        batch: int,
        backoff: Backoff | None = None,
        idle_s: float = IDLE_POLL_S,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self._outbox = outbox
        self._sink = sink
        self._batch = batch
        self._backoff = backoff or Backoff()
        self._idle_s = idle_s
        self._stopping = False
        self._throttle = Throttle(60.0)
        self.delivered = 0
        self.rejected = 0
        self.failed_attempts = 0

    def step(self) -> int:
        """Deliver the oldest batch; return how many points left the outbox (0: it is empty).

        Raises
        ------
        SinkUnavailableError, SinkRefusedError
            The batch was not delivered (points already acknowledged stay acknowledged).
        """
        rows = self._outbox.peek(self._batch)
        if rows:
            self._deliver(rows)
        return len(rows)

    def _deliver(self, rows: Sequence[tuple[int, str]]) -> None:
        try:
            self._sink.write([line for _, line in rows])
        except SinkRejectedError as exc:
            if len(rows) > 1:
                middle = len(rows) // 2
                self._deliver(rows[:middle])
                self._deliver(rows[middle:])
                return
            point_id, line = rows[0]
            logger.error("telemetry point %d refused by the sink (%s): %.200s", point_id, exc, line)
            self._outbox.reject(point_id, str(exc))
            self.rejected += 1
            return
        self._outbox.ack(rows[-1][0], delivered=len(rows))
        self.delivered += len(rows)

    def run(self) -> None:
        """Deliver until :meth:`stop`, waiting out idle spells and outages."""
        failures = 0
        while not self._stopping:
            try:
                moved = self.step()
            except SinkRefusedError as exc:
                failures += 1
                self.failed_attempts += 1
                delay = self._backoff.max_s
                logger.error(
                    "telemetry sink refuses our credentials, org or bucket (%s); %d points"
                    " queued; retrying in %.0f s",
                    exc,
                    self._outbox.depth(),
                    delay,
                )
                self._sleep(delay)
                continue
            except SinkUnavailableError as exc:
                failures += 1
                self.failed_attempts += 1
                delay = self._backoff.next_delay()
                if exc.retry_after_s is not None:
                    delay = min(max(delay, exc.retry_after_s), self._backoff.max_s)
                self._warn_unavailable(exc, delay)
                self._sleep(delay)
                continue
            if failures:
                logger.info("telemetry sink is back after %d failed attempts", failures)
                failures = 0
                self._backoff.reset()
            if not moved:
                self._sleep(self._idle_s)

    def _warn_unavailable(self, exc: SinkUnavailableError, delay: float) -> None:
        suppressed = self._throttle.allow("unavailable")
        if suppressed is None:
            logger.debug("telemetry sink unavailable (%s); retrying in %.1f s", exc, delay)
            return
        logger.warning(
            "telemetry sink unavailable (%s); %d points queued; retrying in %.1f s"
            " (%d similar failures not logged)",
            exc,
            self._outbox.depth(),
            delay,
            suppressed,
        )

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.25))  # wakes for a stop request without spinning

    def queued(self) -> int:
        """Points waiting in the outbox."""
        return self._outbox.depth()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current write (safe from a signal handler)."""
        self._stopping = True


def make_sink(settings: AgentSettings) -> TelemetrySink | None:
    """The sink the settings configure: :class:`InfluxSink` at ``influx_url``, or ``None``."""
    if settings.influx_url is None:
        return None
    token = settings.influx_token.get_secret_value() if settings.influx_token else None
    return InfluxSink(settings.influx_url, settings.influx_org, settings.influx_bucket, token)


def telemetry_main(settings: AgentSettings, *, max_backoff_s: float = MAX_BACKOFF_S) -> ExitCode:
    """Run the telemetry worker until SIGTERM/SIGINT; return its exit code.

    Returns at once with success when no ``influx_url`` is configured. A write in flight when
    the signal comes is finished (at most :data:`WRITE_TIMEOUT_S`) and acknowledged first.
    """
    sink = make_sink(settings)
    if sink is None:
        logger.info("no influx_url configured: telemetry is off")
        return ExitCode.SUCCESS
    try:
        with LocalStore.from_settings(settings) as store:
            forwarder = TelemetryForwarder(
                Outbox(store, settings.outbox_max_rows),
                sink,
                batch=settings.telemetry_batch,
                backoff=Backoff(min(INITIAL_BACKOFF_S, max_backoff_s), max_backoff_s),
            )

            def _on_signal(signum: int, frame: FrameType | None) -> None:
                logger.info("telemetry stopping (signal %d)", signum)
                forwarder.stop()

            signal.signal(signal.SIGTERM, _on_signal)
            signal.signal(signal.SIGINT, _on_signal)
            logger.info("telemetry to %s (batch %d)", settings.influx_url, settings.telemetry_batch)
            forwarder.run()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late second signal must not
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupt the shutdown
            logger.info(
                "telemetry stopped (%d points delivered, %d refused, %d queued)",
                forwarder.delivered,
                forwarder.rejected,
                forwarder.queued(),
            )
    except EdgeAgentError as exc:
        logger.error("telemetry failed: %s", exc)
        return exc.exit_code
    finally:
        sink.close()
    return ExitCode.SUCCESS


def run_telemetry(settings: AgentSettings, *, max_backoff_s: float = MAX_BACKOFF_S) -> None:
    """Process entry point (``multiprocessing`` target): configure logging, run, exit."""
    configure_logging(settings.log_level, json_lines=settings.log_json)
    sys.exit(int(telemetry_main(settings, max_backoff_s=max_backoff_s)))
