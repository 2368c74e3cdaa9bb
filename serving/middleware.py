"""ASGI middleware that refuses request bodies over a size limit with ``413``.

The declared ``Content-Length`` is checked before anything is read, and the bytes actually
received are counted while reading (a chunked upload declares no length), so no more than the
limit is ever buffered. The body is then handed on to the application unchanged.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimitMiddleware:
    """Answer ``413 Content Too Large`` to HTTP requests whose body exceeds ``max_body_bytes``.

    Parameters
    ----------
    app
        The wrapped ASGI application.
    max_body_bytes
        Largest body accepted, in bytes.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _reply(scope, receive, send, 400, "Content-Length header is not an integer")
            return
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        await _reply(
            scope,
            receive,
            send,
            413,
            f"request body exceeds the limit of {limit} bytes ({limit / 1024 / 1024:.3g} MiB);"
            " send fewer windows per request",
        )


def _content_length(scope: Scope) -> int | None:
    """Declared body length; ``None`` when absent, ``-1`` when malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
            return length if length >= 0 else -1
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to the server's ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    # The rest of the body is left unread, so the connection cannot be reused.
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
    await response(scope, receive, send)
