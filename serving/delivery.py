"""The outbox's delivery worker: signed POSTs to webhooks, retries with backoff, dead letters.

:class:`DeliveryWorker` runs as an asyncio task in the app's lifespan. Each round it leases due
rows (:meth:`~serving.integration_types.IntegrationStore.claim_outbox`), POSTs each body to its
webhook with ``Idempotency-Key`` (the same on every attempt), ``FedPM-Event`` and a fresh
``FedPM-Signature`` (:mod:`serving.signing`), and records the outcome (:func:`classify`):

- 2xx: delivered;
- 408, 425, 429, 5xx, a timeout or a connection error: retried after an exponential backoff with
  jitter (``base * 2**(attempts-1)``, capped, times a random factor in [0.5, 1]), or after the
  receiver's ``Retry-After`` when that is longer;
- any other status (400, 401, 404, 3xx ...): a permanent error, dead-lettered at once;
- after ``max_attempts`` attempts, or when the next try would come later than ``max_age_s``
  after the row was queued: dead-lettered.

Delivery is at least once: a replica that dies after the receiver answered but before recording
it leaves the row to be sent again when its lease expires; receivers de-duplicate by
``Idempotency-Key``. No network I/O ever happens in a request's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import anyio.to_thread
import httpx

from serving.adapters import created_reference, request_headers
from serving.egress import EgressPolicy, EgressRefusedError, guarded_transport
from serving.integration_types import DeliveryResult, IntegrationStore, OutboxItem, Webhook
from serving.metrics import ServingMetrics
from serving.settings import ServeSettings
from serving.signing import EVENT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign_payload

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429})
MAX_RETRY_AFTER_S = 3600.0
"""A longer ``Retry-After`` is taken as this (a receiver cannot park a row for days)."""
DISABLED_RECHECK_S = 30.0
"""How often a row of a disabled webhook is looked at again."""


@dataclass(frozen=True)
class DeliveryPolicy:
    """Timeouts, backoff and give-up limits of deliveries (from :class:`ServeSettings`)."""

    timeout_s: float = 10.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0
    max_attempts: int = 1000
    max_age_s: float = 3 * 86_400.0
    lease_s: float = 60.0
    poll_s: float = 10.0
    batch: int = 20


def policy_from(settings: ServeSettings) -> DeliveryPolicy:
    """The delivery policy of a serving process's settings."""
    return DeliveryPolicy(
        timeout_s=settings.delivery_timeout_s,
        backoff_base_s=settings.delivery_backoff_base_s,
        backoff_cap_s=settings.delivery_backoff_cap_s,
        max_attempts=settings.delivery_max_attempts,
        max_age_s=settings.delivery_max_age_s,
        lease_s=max(settings.delivery_lease_s, settings.delivery_timeout_s + 5.0),
        poll_s=settings.delivery_poll_s,
    )


def backoff_s(attempt: int, policy: DeliveryPolicy, rng: Callable[[], float]) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based), with jitter.

    Examples
    --------
    >>> backoff_s(3, DeliveryPolicy(backoff_base_s=2, backoff_cap_s=600), lambda: 1.0)
    8.0
    >>> backoff_s(30, DeliveryPolicy(backoff_base_s=2, backoff_cap_s=600), lambda: 0.0)
    300.0
    """
    delay = min(policy.backoff_cap_s, policy.backoff_base_s * 2.0 ** min(attempt - 1, 60))
    return delay * (0.5 + 0.5 * rng())


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return min(max(parsedate_to_datetime(text).timestamp() - now, 0.0), MAX_RETRY_AFTER_S)
    return None


def classify(
    item: OutboxItem,
    now: float,
    policy: DeliveryPolicy,
    *,
    status_code: int | None,
    error: str = "",
    retry_after: str | None = None,
    rng: Callable[[], float] = random.random,
) -> DeliveryResult:
    """What one attempt at ``item`` came to: delivered, retry (and when), or dead letter.

    ``status_code`` None means no answer (timeout, refused connection): retried.
    """
    if status_code is not None and 200 <= status_code < 300:
        return DeliveryResult("delivered", status_code)
    retryable = status_code is None or status_code in RETRYABLE_STATUS or status_code >= 500
    reason = error or f"HTTP {status_code}"
    if not retryable:
        return DeliveryResult("dead", status_code, f"permanent error: {reason}")
    attempts = item.attempts + 1
    if attempts >= policy.max_attempts:
        return DeliveryResult("dead", status_code, f"gave up after {attempts} attempts: {reason}")
    delay = backoff_s(attempts, policy, rng)
    asked = retry_after_s(retry_after, now)
    if asked is not None:
        delay = max(delay, asked)
    if now + delay - item.age_from > policy.max_age_s:
        return DeliveryResult(
            "dead", status_code, f"gave up after {policy.max_age_s:g} s: {reason}"
        )
    return DeliveryResult("retry", status_code, reason, now + delay)


class DeliveryWorker:
    """Deliver the outbox's due rows until cancelled (one per process; replicas may share)."""

    def __init__(
        self,
        store: IntegrationStore,
        policy: DeliveryPolicy,
        metrics: ServingMetrics,
        *,
        egress: EgressPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # every connection checked against the egress policy (serving.egress), unless a test
        # or an embedding application brings its own transport
        self._transport = transport or guarded_transport(egress or EgressPolicy())
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Ask for a round now (safe from any thread): a request was just queued."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Deliver rounds until cancelled; a failing round is logged and retried later."""
        self._loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(
            timeout=self.policy.timeout_s, follow_redirects=False, transport=self._transport
        ) as client:
            while True:
                wait = self.policy.poll_s
                try:
                    sent = await self.run_once(client)
                    if sent < self.policy.batch:  # caught up: sleep until the next row is due
                        wait = await self._idle_wait()
                except Exception:  # the store is briefly unusable: try again next round
                    logger.exception("outbox delivery round failed")
                    sent = 0
                if sent < self.policy.batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                    self._wake.clear()

    async def _idle_wait(self) -> float:
        """Refresh the outbox gauges; seconds until the next pending row is due (<= poll_s).

        An idle worker looks at the shared outbox only when a row of its own comes due (a retry,
        or a lease another worker let lapse) or every ``poll_s``; a row queued in this process
        wakes it at once. So idle replicas do not query a shared database every second, and a
        retry waits for its backoff, not for the next poll.
        """

        def look() -> tuple[dict[str, int], float | None]:
            return self.store.outbox_counts(), self.store.outbox_next_due()

        counts, due = await anyio.to_thread.run_sync(look)
        for status, n in counts.items():
            self.metrics.outbox_rows.labels(status).set(n)
        if due is None:
            return self.policy.poll_s
        return min(max(due - time.time(), 0.0), self.policy.poll_s)

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """Claim due rows and try each once; return how many were claimed."""
        now = time.time()
        claimed = await anyio.to_thread.run_sync(
            self.store.claim_outbox, self.owner, now, self.policy.batch, self.policy.lease_s
        )
        if claimed:
            try:
                await asyncio.gather(*(self._deliver(client, i, h) for i, h in claimed))
            except asyncio.CancelledError:  # shutting down: hand unfinished rows back now
                for item, _ in claimed:  # (finished ones hold no lease: a no-op for them)
                    self.store.release_outbox(item.outbox_id, self.owner, time.time())
                raise
        return len(claimed)

    async def _deliver(
        self, client: httpx.AsyncClient, item: OutboxItem, hook: Webhook | None
    ) -> None:
        now = time.time()
        if hook is not None and not hook.enabled:
            await anyio.to_thread.run_sync(
                self.store.release_outbox, item.outbox_id, self.owner, now + DISABLED_RECHECK_S
            )
            return
        if hook is None:
            result = DeliveryResult("dead", None, f"webhook '{item.webhook_id}' was deleted")
        else:
            result = await self._post(client, item, hook)
        done = await anyio.to_thread.run_sync(
            self.store.finish_delivery, item.outbox_id, self.owner, result, time.time()
        )
        if not done:  # the lease ran out and another worker took the row over
            logger.warning("outbox row %d: lease lost before recording", item.outbox_id)
            return
        self.metrics.deliveries.labels(result.outcome).inc()
        if result.outcome == "dead":
            logger.warning(
                "outbox row %d to webhook %s dead-lettered: %s",
                item.outbox_id,
                item.webhook_id,
                result.error,
            )

    async def _post(
        self, client: httpx.AsyncClient, item: OutboxItem, hook: Webhook
    ) -> DeliveryResult:
        headers = {
            **hook.headers,
            **request_headers(hook.format),
            "Content-Type": item.content_type,
            IDEMPOTENCY_HEADER: item.idempotency_key,
            EVENT_HEADER: item.event,
            SIGNATURE_HEADER: sign_payload(item.body, hook.secret),
            "User-Agent": "fedpm-webhooks/1",
        }
        try:
            response = await client.post(hook.url, content=item.body, headers=headers)
        except httpx.HTTPError as exc:
            if isinstance(exc.__cause__, EgressRefusedError):  # permanent until someone acts
                return DeliveryResult("dead", None, f"refused: {exc.__cause__}")
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return classify(item, time.time(), self.policy, status_code=None, error=error)
        result = classify(
            item,
            time.time(),
            self.policy,
            status_code=response.status_code,
            retry_after=response.headers.get("retry-after"),
        )
        if result.outcome == "delivered":
            reference = created_reference(hook.format, response.content)
            result = dataclasses.replace(result, reference=reference)
        return result
