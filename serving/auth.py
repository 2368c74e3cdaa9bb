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
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

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


async def authenticated(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> ApiKey:
    """The caller's API key; ``401`` without a valid one, ``429`` over its rate.

    A coroutine, like every cheap dependency of the API: FastAPI runs a plain ``def``
    dependency in its thread pool, and a handoff per dependency cost a one-window prediction
    milliseconds (docs/serving-performance.md). The key lookup is one indexed SQLite read of
    tens of microseconds, done on the event loop.
    """
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


def require(permission: Permission) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    """A dependency: the caller's key, which must hold ``permission`` (else ``403``)."""

    async def check(key: KeyDep) -> ApiKey:
        if permission not in key.permissions:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this API key lacks the '{permission.value}' permission",
            )
        return key

    return check


def check_site(key: ApiKey, site: str) -> None:
    """``403`` unless ``key`` may act on ``site`` of its tenant."""
    if not key.allows_site(site):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"this API key is not scoped to site '{site}'"
        )
