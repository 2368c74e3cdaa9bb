"""Prometheus metrics of the serving API, served at ``GET /metrics`` (no API key).

- ``fedpm_serving_requests_total{route, method, status}``: requests answered;
- ``fedpm_serving_request_seconds{route, method}``: latency histogram, from the first byte
  received to the last byte sent (route is the template, ``/v1/assets/{asset_id}``, so ids do
  not explode the label set; unknown paths count as ``<unmatched>``);
- ``fedpm_serving_errors_total{kind}``: error answers by kind (``unauthorised``, ``forbidden``,
  ``not_found``, ``rate_limited``, ``too_large``, ``invalid_input``, ``no_model``,
  ``server_error``, ``other``);
- ``fedpm_serving_windows_total``: windows predicted;
- ``fedpm_serving_outbox_rows{status}`` (pending, delivered, dead: the dead-letter list),
  ``fedpm_serving_webhook_deliveries_total{outcome}`` (delivered, retry, dead),
  ``fedpm_serving_maintenance_requests_total`` and ``fedpm_serving_rule_errors_total``
  (docs/erp-integration.md);
- ``fedpm_serving_model_info{version, sha256}`` (1 for the model now served),
  ``fedpm_serving_model_loaded`` (0 or 1), ``fedpm_serving_model_swaps_total`` and
  ``fedpm_serving_models_refused_total`` (versions refused by ``serving.lifecycle``).

Each application has its own registry, so tests and several apps in one process do not mix.
With several uvicorn worker processes (``FEDPM_SERVE_WORKERS``) ``python -m serving`` sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start: every worker then writes its figures to
files there and any worker's ``/metrics`` answers with the sum over all of them (counters and
histograms summed; the gauges show the value written last by any worker, and a model no
longer served by a worker is set to 0 rather than removed).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_CONVERTER = re.compile(r"\{(\w+):\w+\}")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: set (to an empty folder) before the worker processes import prometheus_client
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_KINDS = {
    401: "unauthorised",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
    422: "invalid_input",
    429: "rate_limited",
    503: "no_model",
}


class ServingMetrics:
    """The serving API's Prometheus collectors, on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        own = self.registry
        # multiprocess only if prometheus_client was imported with the folder already set
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV)) and (
            values.ValueClass is not values.MutexValue
        )
        if self.multiprocess:
            own = CollectorRegistry()  # values live in the folder; self.registry reads them all
            multiprocess.MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self._served: tuple[str, str] | None = None
        self.requests = Counter(
            "fedpm_serving_requests",
            "Requests answered",
            ["route", "method", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "fedpm_serving_request_seconds",
            "Time from request to the last byte of the answer",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.errors = Counter(
            "fedpm_serving_errors", "Error answers by kind", ["kind"], registry=own
        )
        self.windows = Counter("fedpm_serving_windows", "Windows predicted", registry=own)
        self.model_info = Gauge(
            "fedpm_serving_model_info",
            "The model now served (1), by version and sha256",
            ["version", "sha256"],
            registry=own,
            multiprocess_mode="mostrecent",
        )
        self.model_swaps = Counter("fedpm_serving_model_swaps", "Models swapped in", registry=own)
        self.models_refused = Counter(
            "fedpm_serving_models_refused",
            "Registry versions refused (sha256, signature or contract)",
            registry=own,
        )
        self.model_loaded = Gauge(
            "fedpm_serving_model_loaded",
            "1 while a verified model is loaded",
            registry=own,
            multiprocess_mode="mostrecent",
        )
        # ERP/CMMS integration (serving.delivery, serving.integration)
        self.outbox_rows = Gauge(
            "fedpm_serving_outbox_rows",
            "Webhook outbox rows by status (pending, delivered, dead)",
            ["status"],
            registry=own,
            multiprocess_mode="mostrecent",
        )
        self.deliveries = Counter(
            "fedpm_serving_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retry, dead)",
            ["outcome"],
            registry=own,
        )
        self.maintenance_requests = Counter(
            "fedpm_serving_maintenance_requests",
            "Maintenance requests opened by rules",
            registry=own,
        )
        self.rule_errors = Counter(
            "fedpm_serving_rule_errors",
            "Predictions whose rules could not be evaluated or stored",
            registry=own,
        )

    def set_model(self, version: str | None, sha256: str | None) -> None:
        """Record which model is served (None: none)."""
        served = None if version is None or sha256 is None else (version, sha256)
        if not self.multiprocess:
            self.model_info.clear()
        elif self._served is not None and self._served != served:
            self.model_info.labels(*self._served).set(0)  # a file's series cannot be removed
        if served is not None:
            self.model_info.labels(*served).set(1)
        self._served = served
        self.model_loaded.set(0 if version is None else 1)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)
        if status >= 400:
            kind = _KINDS.get(status, "server_error" if status >= 500 else "other")
            self.errors.labels(kind).inc()


class MetricsMiddleware:
    """Time and count every HTTP request (pure ASGI: no extra task or body copy)."""

    def __init__(
        self, app: ASGIApp, metrics: ServingMetrics, routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = tuple(routes)  # to name requests answered before routing (413, 400)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.observe(
                self._route(scope), scope["method"], status, time.perf_counter() - start
            )

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")  # set by the router on a match
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] == Match.FULL), None)
        # "/v1/assets/{asset_id:anypath}" -> "/v1/assets/{asset_id}", as OpenAPI names it
        return _CONVERTER.sub(r"{\1}", str(getattr(route, "path", "<unmatched>")))
