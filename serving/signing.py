"""Webhook signatures: HMAC-SHA256 over a timestamp and the body, Stripe-style.

Every delivery carries ``FedPM-Signature: t=<unix seconds>,v1=<hex HMAC>``, where the HMAC key
is the webhook's secret and the message is ``f"{t}.".encode() + body``. A receiver recomputes it
over the raw body bytes, compares in constant time, and refuses a timestamp older (or newer)
than its tolerance, so a captured request cannot be replayed later; a replay within the
tolerance carries an ``Idempotency-Key`` already seen. :func:`verify_signature` is that check,
used by the test receiver and quoted in docs/erp-integration.md.

Examples
--------
>>> header = sign_payload(b'{"a":1}', "s3cret", timestamp=1_700_000_000)
>>> header[:13]
't=1700000000,'
>>> verify_signature(b'{"a":1}', header, "s3cret", now=1_700_000_010)
True
>>> verify_signature(b'{"a":2}', header, "s3cret", now=1_700_000_010)
False
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "FedPM-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "FedPM-Event"
DEFAULT_TOLERANCE_S = 300
"""How old (or early) a signature's timestamp may be before a receiver refuses it."""


def _mac(body: bytes, secret: str, timestamp: int) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_payload(body: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """The ``FedPM-Signature`` header value for ``body`` signed with ``secret`` now."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(body, secret, t)}"


def verify_signature(
    body: bytes,
    header: str,
    secret: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` is a valid signature of ``body`` under ``secret``, fresh enough.

    Parameters
    ----------
    body
        The request body exactly as received (not re-serialised JSON).
    header
        The ``FedPM-Signature`` header: ``t=<unix s>,v1=<hex>`` (several ``v1`` entries are
        accepted, for a secret being rotated).
    secret
        The webhook's secret.
    tolerance_s
        Largest difference between the timestamp and ``now``, seconds.
    now
        Current UNIX time (default: the clock).
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _mac(body, secret, timestamp)
    return any(hmac.compare_digest(expected, c) for c in candidates)
