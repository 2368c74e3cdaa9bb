"""Webhook delivery against a real receiver on loopback: outages, restarts, dead letters.

The fault test runs the real service (``python -m serving`` in a child process) with short
backoff settings, takes the receiver down while requests are triggered, restarts the service
while deliveries are pending, brings the receiver back, and checks that every maintenance
request arrived once: one distinct ``Idempotency-Key`` per request, none missing, every
signature valid. Waits poll with generous deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_helpers import api_key
from webhook_receiver import Receiver

from serving.integration_sqlite import idempotency_key
from serving.integration_types import OPENED_EVENT

SECRET = "receiver-secret-0123456789abcdef"
FAST_DELIVERY = {
    "FEDPM_SERVE_DELIVERY_BACKOFF_BASE_S": "0.2",
    "FEDPM_SERVE_DELIVERY_BACKOFF_CAP_S": "1.0",
    "FEDPM_SERVE_DELIVERY_POLL_S": "0.2",
    "FEDPM_SERVE_DELIVERY_TIMEOUT_S": "2",
    "FEDPM_SERVE_DELIVERY_MAX_ATTEMPTS": "1000",
    "FEDPM_SERVE_RATE_LIMIT_PER_MINUTE": "0",
    "FEDPM_SERVE_MODEL_POLL_S": "0",
    "FEDPM_SERVE_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',  # the receiver (serving.egress)
}
DEADLINE_S = 120.0  # a loaded 2-core machine is slow; the tests never assert on time


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, check: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"waited {deadline_s:g} s for {what}")
        time.sleep(0.1)


class Service:
    """``python -m serving`` on a state file, started and stopped like a real deployment."""

    def __init__(self, registry: Path, state: Path, cwd: Path) -> None:
        self.registry, self.state, self.cwd = registry, state, cwd
        self.proc: subprocess.Popen[str] | None = None
        self.base = ""

    def start(self) -> None:
        port = _free_port()
        env = {**os.environ, **FAST_DELIVERY, "FEDPM_SERVE_STATE_PATH": str(self.state)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving",
                "--registry",
                str(self.registry),
                "--port",
                str(port),
            ],
            cwd=self.cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}")
            try:
                return httpx.get(f"{self.base}/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        _wait("the server to be ready", healthy)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = rf"^{re.escape(name)}{re.escape('{' + wanted + '}') if wanted else ''} (\S+)$"
        found = re.search(pattern, text, re.MULTILINE)
        return 0.0 if found is None else float(found.group(1))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def service(served_registry: Path, tmp_path: Path) -> Iterator[Service]:
    s = Service(served_registry, tmp_path / "state.sqlite", tmp_path)
    yield s
    s.stop()


def _predict(http: httpx.Client, window: list[float], asset: str, n: int) -> None:
    body = {"sample_rate_hz": 12000, "asset_id": asset, "windows": [window] * n}
    answer = http.post("/v1/predictions", json=body)
    assert answer.status_code == 200, answer.text


@pytest.mark.integration
def _hooked(client: Any, receiver: Receiver, name: str, asset: str = "pump-1", **hook: Any) -> Any:
    """Register webhook ``name`` to the receiver's ``/name``, a rule firing on every window of
    ``asset`` to it, and the asset; return the client."""
    body = {"url": receiver.url(f"/{name}"), "secret": SECRET, **hook}
    assert client.put(f"/v1/webhooks/{name}", json=body).status_code == 201
    rule = {"when": {"failure_probability_gte": 0.0}, "webhook_id": name, "asset_ids": [asset]}
    assert client.put(f"/v1/rules/{name}", json=rule).status_code == 201
    assert client.put(f"/v1/assets/{asset}", json={"site": "plant-a"}).status_code == 201
    return client


def _fast(**settings: Any) -> dict[str, Any]:
    """App settings for a delivery test: quick retries, no rate limit, the receiver allowed."""
    defaults = {
        "delivery_backoff_base_s": 0.2,
        "delivery_backoff_cap_s": 1.0,
        "delivery_poll_s": 0.2,
        "rate_limit_per_minute": 0,
        "webhook_allowed_networks": ("127.0.0.0/8",),
    }
    return {**defaults, **settings}


def test_no_request_is_lost_or_doubled_through_outages_and_restarts(
    service: Service, receiver: Receiver, window: Callable[..., list[float]]
):
    # Prepare
    headers = {"Authorization": f"Bearer {api_key(service.state)}"}
    service.start()
    samples = window()
    assets = [f"pump-{i}" for i in range(1, 7)]
    with httpx.Client(base_url=service.base, headers=headers, timeout=30) as http:
        hook = {"url": receiver.url(), "secret": SECRET}
        assert http.put("/v1/webhooks/cmms", json=hook).status_code == 201
        rule = {"when": {"failure_probability_gte": 0.0}, "consecutive": 2, "webhook_id": "cmms"}
        assert http.put("/v1/rules/any-fault", json=rule).status_code == 201
        for asset in assets:
            assert http.put(f"/v1/assets/{asset}", json={"site": "plant-a"}).status_code == 201

        # Execute: two requests delivered while all is well
        for asset in assets[:2]:
            _predict(http, samples, asset, n=2)
        _wait("the first two deliveries", lambda: len(receiver.keys()) == 2)
        # the receiver goes down; two more requests (one from windows of two requests)
        receiver.stop()
        _predict(http, samples, assets[2], n=1)
        _predict(http, samples, assets[2], n=1)
        _predict(http, samples, assets[3], n=2)
        _wait("failed attempts", lambda: service.metric(
            "fedpm_serving_webhook_deliveries_total", outcome="retry") >= 2)  # fmt: skip
    # the service restarts while those are pending
    service.stop()
    service.start()
    with httpx.Client(base_url=service.base, headers=headers, timeout=30) as http:
        for asset in assets[4:]:
            _predict(http, samples, asset, n=2)
        _wait("failed attempts after the restart", lambda: service.metric(
            "fedpm_serving_webhook_deliveries_total", outcome="retry") >= 2)  # fmt: skip
        # the receiver comes back on the same port
        receiver.start()
        _wait("every request to arrive", lambda: len(receiver.keys()) >= len(assets))
        _wait("the outbox to drain", lambda: service.metric(
            "fedpm_serving_outbox_rows", status="pending") == 0)  # fmt: skip
        requests = http.get("/v1/maintenance-requests").json()["requests"]

    # Assert
    assert sorted(r["asset_id"] for r in requests) == assets  # one request per asset
    expected = {idempotency_key(r["request_id"], OPENED_EVENT) for r in requests}
    assert receiver.keys() == expected  # one distinct key per request, none missing
    for key, event in receiver.received.accepted.items():
        assert idempotency_key(event["request"]["id"], OPENED_EVENT) == key
    assert receiver.received.bad_signatures == 0
    with sqlite3.connect(service.state) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY status"))
    assert statuses == {"delivered": len(assets)}


@pytest.mark.integration
def test_a_permanent_error_is_dead_lettered_and_can_be_retried(
    make_client: Callable[..., Any],
    served_registry: Path,
    tmp_path: Path,
    receiver: Receiver,
    window: Callable[..., list[float]],
):
    # Prepare: the real app, its delivery worker in its lifespan, a receiver answering 400
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **_fast())
    receiver.status["/strict"] = 400
    _hooked(client, receiver, "strict")

    # Execute
    body = {"sample_rate_hz": 12000, "asset_id": "pump-1", "windows": [window()]}
    assert client.post("/v1/predictions", json=body).status_code == 200

    def dead() -> list[dict[str, Any]]:
        letters: list[dict[str, Any]] = client.get("/v1/dead-letters").json()["dead_letters"]
        return letters

    _wait("the dead letter", lambda: len(dead()) == 1)
    letter = dead()[0]
    receiver.status["/strict"] = 200  # the receiver is fixed
    retried = client.post(f"/v1/dead-letters/{letter['dead_letter_id']}/retry")
    _wait("the retried delivery", lambda: len(receiver.keys()) == 1)

    # Assert
    assert letter["last_status"] == 400
    assert letter["attempts"] == 1  # a permanent error is not retried by itself
    assert "permanent" in letter["last_error"]
    assert retried.status_code == 200
    assert receiver.keys() == {letter["idempotency_key"]}  # the same key as before
    assert receiver.received.attempts["/strict"] == 2
    assert dead() == []


def test_webhooks_to_internal_addresses_are_refused_unless_the_operator_allows_them(
    make_client: Callable[..., Any],
    served_registry: Path,
    tmp_path: Path,
    receiver: Receiver,
    window: Callable[..., list[float]],
):
    # Prepare: an operator who allowed the receiver's loopback network sets a webhook up
    state = tmp_path / "state.sqlite"
    setup = make_client(served_registry, state_path=state, **_fast(delivery_enabled=False))
    _hooked(setup, receiver, "internal")

    # Execute: the same state served with the default policy (public addresses only)
    client = make_client(
        served_registry, state_path=state, delivery_poll_s=0.2, rate_limit_per_minute=0
    )
    refused = {
        url: client.put("/v1/webhooks/probe", json={"url": url, "secret": SECRET})
        for url in (
            receiver.url("/x"),  # 127.0.0.1
            f"http://localhost:{receiver.url('/x').rsplit(':', 1)[1]}",
            "http://169.254.169.254/latest/meta-data/",  # a cloud's instance metadata
            "http://[::ffff:10.0.0.1]/hook",
        )
    }
    unresolved = client.put(
        "/v1/webhooks/later", json={"url": "https://erp.invalid/hook", "secret": SECRET}
    )
    body = {"sample_rate_hz": 12000, "asset_id": "pump-1", "windows": [window()]}
    assert client.post("/v1/predictions", json=body).status_code == 200

    def dead() -> list[dict[str, Any]]:
        letters: list[dict[str, Any]] = client.get("/v1/dead-letters").json()["dead_letters"]
        return letters

    _wait("the refused delivery", lambda: len(dead()) == 1)

    # Assert: each internal URL is a 422 that says why; a name that does not resolve yet is
    # accepted (every delivery checks again); the delivery to loopback never left the service
    for url, answer in refused.items():
        assert answer.status_code == 422, url
        assert "not a public address" in answer.json()["detail"], url
    assert unresolved.status_code == 201
    letter = dead()[0]
    assert letter["last_error"].startswith("refused: webhook host 127.0.0.1")
    assert letter["attempts"] == 1
    assert receiver.received.attempts.get("/internal", 0) == 0


def test_the_erp_document_number_is_read_back_from_sap_and_maximo(
    make_client: Callable[..., Any],
    served_registry: Path,
    tmp_path: Path,
    receiver: Receiver,
    window: Callable[..., list[float]],
):
    # Prepare: SAP answers a create with the notification (OData v2), Maximo with the work
    # order's wonum (it was asked for it); one rule and one asset for each
    receiver.status.update({"/sap": 201, "/maximo": 201})
    receiver.replies["/sap"] = json.dumps(
        {"d": {"MaintenanceNotification": "10004711", "NotificationType": "M2"}}
    ).encode()
    receiver.replies["/maximo"] = b'{"wonum": "1203", "siteid": "BEDFORD"}'
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **_fast())
    for fmt in ("sap", "maximo"):
        _hooked(client, receiver, fmt, asset=f"pump-{fmt}", format=fmt)

    # Execute
    for fmt in ("sap", "maximo"):
        body = {"sample_rate_hz": 12000, "asset_id": f"pump-{fmt}", "windows": [window()]}
        assert client.post("/v1/predictions", json=body).status_code == 200

    def numbers() -> dict[str, str | None]:
        listed = client.get("/v1/maintenance-requests").json()["requests"]
        return {r["asset_id"]: r["work_order_id"] for r in listed}

    _wait("both numbers", lambda: None not in numbers().values() and len(numbers()) == 2)

    # Assert
    assert numbers() == {"pump-sap": "10004711", "pump-maximo": "1203"}
    assert receiver.received.headers["/maximo"]["properties"] == "wonum,siteid"
    assert "properties" not in receiver.received.headers["/sap"]


def test_an_idle_worker_retries_when_the_retry_falls_due_not_at_its_next_poll(
    make_client: Callable[..., Any],
    served_registry: Path,
    tmp_path: Path,
    receiver: Receiver,
    window: Callable[..., list[float]],
):
    # Prepare: the worker looks at the outbox on its own only every 120 s; backoff is 0.2-0.5 s
    settings = _fast(delivery_poll_s=120.0, delivery_backoff_cap_s=0.5)
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **settings)
    receiver.status["/flaky"] = 503
    _hooked(client, receiver, "flaky")

    # Execute: the first attempt fails; the receiver recovers while the worker idles
    body = {"sample_rate_hz": 12000, "asset_id": "pump-1", "windows": [window()]}
    assert client.post("/v1/predictions", json=body).status_code == 200
    _wait("the first attempt", lambda: receiver.received.attempts.get("/flaky", 0) >= 1)
    receiver.status["/flaky"] = 200
    _wait("the retry", lambda: len(receiver.keys()) == 1, deadline_s=60.0)

    # Assert: delivered by a retry long before the 120 s poll would have looked again
    assert receiver.received.attempts["/flaky"] >= 2
    assert client.get("/v1/dead-letters").json()["dead_letters"] == []
