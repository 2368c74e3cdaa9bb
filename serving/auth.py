"""Who is calling: API keys (``Authorization: Bearer`` or ``X-API-Key``), scopes, rate limits.

Every ``/v1`` route depends on :func:`authenticated`: no key or an invalid one is ``401``, a key
over its rate ``429`` (with ``Retry-After``). :func:`require` adds a permission check (``403``).
Site scope is checked where an asset is named (:mod:`serving.assets_api`): a key limited to some
sites gets ``403`` on another site of its tenant, and no key sees another tenant's assets
(``404``, as for an asset that does not exist, so ids of other tenants do not leak).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.routing import BaseRoute

from serving.schemas import ErrorResponse
from serving.state import ApiKey, Permission, StateStore

AUTH_ERRORS: dict[int | str, dict[str, object]] = {
    status.HTTP_401_UNAUTHORIZED: {"model": ErrorResponse, "description": "No valid API key"},
    status.HTTP_403_FORBIDDEN: {"model": ErrorResponse, "description": "Outside the key's scope"},
    status.HTTP_429_TOO_MANY_REQUESTS: {"model": ErrorResponse, "description": "Rate limited"},
}
"""OpenAPI responses of every route behind an API key."""

_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


class RateLimiter:
    """Token buckets per API key: ``per_minute`` requests a minute, bursts up to that many.

    The buckets live in this process: with N replicas behind a load balancer a key gets up to
    N times its rate (docs/serving-security.md).
    """

    def __init__(self, default_per_minute: int) -> None:
        self.default_per_minute = default_per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)
        self._lock = threading.Lock()

    def acquire(self, key_id: str, per_minute: int = 0, now: float | None = None) -> float:
        """Take one token; return 0.0, or the seconds to wait when the bucket is empty."""
        rate = per_minute or self.default_per_minute
        if rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(rate), now))
            tokens = min(float(rate), tokens + (now - last) * rate / 60.0)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) * 60.0 / rate


def _unauthorised(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def authenticated(request: Request) -> ApiKey:
    """The caller's API key; ``401`` without a valid one, ``429`` over its rate.

    A coroutine, like every cheap dependency of the API: FastAPI runs a plain ``def``
    dependency in its thread pool, and a handoff per dependency cost a one-window prediction
    milliseconds (docs/serving-performance.md). The key lookup is one indexed SQLite read of
    tens of microseconds, done on the event loop. The two headers are read here with
    FastAPI's own security classes, called directly rather than declared as two more
    dependencies (each declared dependency costs every request its resolution, about 0.15 ms
    for these two); :func:`openapi_with_api_keys` declares them in the OpenAPI document.
    """
    bearer = await _bearer(request)
    header_key = await _header(request)
    presented = bearer.credentials if bearer is not None else header_key
    if not presented:
        raise _unauthorised(
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    state: StateStore = request.app.state.state_store
    key = state.authenticate(presented.strip())
    if key is None:
        raise _unauthorised("the API key is not valid (unknown, mistyped or revoked)")
    limiter: RateLimiter = request.app.state.rate_limiter
    wait = limiter.acquire(key.key_id, key.rate_per_minute)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit of this API key reached; retry in {math.ceil(wait)} s",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    request.state.api_key = key
    return key


KeyDep = Annotated[ApiKey, Depends(authenticated)]

_KEY_DEPENDENCIES: set[Callable[..., Any]] = {authenticated}
"""The dependencies that read an API key: :func:`authenticated` and every :func:`require`."""


def _needs_key(dependant: Dependant) -> bool:
    return any(d.call in _KEY_DEPENDENCIES or _needs_key(d) for d in dependant.dependencies)


def openapi_with_api_keys(
    app: FastAPI, routes: Sequence[BaseRoute]
) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: FastAPI's document plus the API-key schemes on every keyed operation.

    The keyed routes read the key with :func:`authenticated`, which calls the security classes
    itself, so FastAPI does not see them; this adds what it would have written: the
    ``HTTPBearer`` and ``APIKeyHeader`` schemes, and either one as the operation's security.
    ``routes`` are the application's API routes (those of the routers it includes).
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()  # FastAPI's, cached on the app after the first call
        schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
        for scheme in (_bearer, _header):
            schemes[scheme.scheme_name] = scheme.model.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
        either: list[dict[str, list[str]]] = [{_bearer.scheme_name: []}, {_header.scheme_name: []}]
        for route in routes:
            if (
                isinstance(route, APIRoute)
                and route.include_in_schema
                and _needs_key(route.dependant)
            ):
                for method in route.methods or ():
                    document["paths"][route.path_format][method.lower()]["security"] = either
        return document

    return openapi


def require(permission: Permission) -> Callable[[Request], Awaitable[ApiKey]]:
    """A dependency: the caller's key, which must hold ``permission`` (else ``403``)."""

    async def check(request: Request) -> ApiKey:
        key = await authenticated(request)
        if permission not in key.permissions:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this API key lacks the '{permission.value}' permission",
            )
        return key

    _KEY_DEPENDENCIES.add(check)
    return check


def check_site(key: ApiKey, site: str) -> None:
    """``403`` unless ``key`` may act on ``site`` of its tenant."""
    if not key.allows_site(site):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"this API key is not scoped to site '{site}'"
        )
