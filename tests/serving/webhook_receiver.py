"""A real HTTP webhook receiver on loopback, for the delivery tests.

A threaded :mod:`http.server` that does what a careful ERP-side receiver does: verifies the
``FedPM-Signature`` (:func:`serving.signing.verify_signature`), de-duplicates by
``Idempotency-Key`` and records what it accepted. It can be stopped and started again on the
same port (an outage), and told to answer a path with an error status.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from serving.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature


@dataclass
class Received:
    """Everything the receiver saw."""

    accepted: dict[str, Any] = field(default_factory=dict)  # key -> first body (parsed)
    duplicates: int = 0
    attempts: dict[str, int] = field(default_factory=dict)  # path -> POSTs
    bad_signatures: int = 0
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> last headers


class Receiver:
    """Start with :meth:`start`, stop with :meth:`stop`; ``status`` maps a path to an answer."""

    def __init__(self, secret: str, port: int = 0) -> None:
        self.secret = secret
        self.port = port
        self.status: dict[str, int] = {}
        self.replies: dict[str, bytes] = {}  # path -> body of a 2xx answer (an ERP's create)
        self.received = Received()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/hook") -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        """Listen (again) on the port, in a thread."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._handle(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._server = None

    def keys(self) -> set[str]:
        """Idempotency keys accepted so far."""
        with self._lock:
            return set(self.received.accepted)

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        path = handler.path
        key = handler.headers.get(IDEMPOTENCY_HEADER, "")
        signature = handler.headers.get(SIGNATURE_HEADER, "")
        with self._lock:
            self.received.attempts[path] = self.received.attempts.get(path, 0) + 1
            self.received.headers[path] = {k.lower(): v for k, v in handler.headers.items()}
            answer = self.status.get(path, 200)
            if not verify_signature(body, signature, self.secret):
                self.received.bad_signatures += 1
                answer = 401
            elif 200 <= answer < 300:
                if key in self.received.accepted:
                    self.received.duplicates += 1
                else:
                    self.received.accepted[key] = json.loads(body)
        reply = self.replies.get(path, b"") if 200 <= answer < 300 else b""
        handler.send_response(answer)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(reply)))
        handler.end_headers()
        handler.wfile.write(reply)
