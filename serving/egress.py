"""Where webhooks may be delivered: no internal addresses unless the operator allows them.

A webhook URL is chosen by a tenant's administrator, and the service POSTs to it from inside
the operator's network: without a guard, a URL naming ``169.254.169.254`` (a cloud's instance
metadata), ``localhost`` or a private address would make the service send requests to
internal systems for whoever holds a ``manage_webhooks`` key (server-side request forgery,
OWASP API7:2023). So by default a webhook may only reach **global** unicast addresses; the
operator lists the private networks a plant's ERP or CMMS really lives on
(``FEDPM_SERVE_WEBHOOK_ALLOWED_NETWORKS='["10.20.0.0/16"]'``).

The check runs twice:

* when a webhook is created or changed (:func:`EgressPolicy.check_url`), so the administrator
  gets a ``422`` that says why, at once;
* at every connection the delivery worker opens (:class:`GuardedBackend`, httpcore's network
  backend): the host is resolved, **every** address it resolves to is checked, and the
  connection goes to the address that was checked. A name that resolved to a public address
  at registration and to an internal one later (DNS rebinding) is refused then, and the row
  is dead-lettered with the reason.

An HTTP proxy configured in the environment (``HTTPS_PROXY``) receives the connections
instead; the guard then checks the proxy's address, and the proxy's own rules decide the rest
(docs/erp-integration.md).
"""

from __future__ import annotations

import ipaddress
import socket
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["EgressPolicy", "EgressRefusedError", "GuardedBackend", "guarded_transport"]


class EgressRefusedError(httpcore.ConnectError):
    """A webhook's host is, or resolves to, an address the egress policy does not allow.

    A subclass of httpcore's connection error, so httpx raises it as an
    :class:`httpx.ConnectError` whose ``__cause__`` is this exception.
    """


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Networks from CIDR strings (``"10.20.0.0/16"``, ``"fd00::/8"``, ``"127.0.0.1"``).

    Raises
    ------
    ValueError
        A string that is not an IP network.
    """
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP network (e.g. 10.20.0.0/16)") from exc
    return tuple(networks)


@dataclass(frozen=True)
class EgressPolicy:
    """Global unicast addresses, plus the networks the operator allows."""

    allowed_networks: tuple[Network, ...] = ()

    def allows(self, address: Address) -> bool:
        """Whether a connection to ``address`` is allowed.

        Examples
        --------
        >>> import ipaddress
        >>> policy = EgressPolicy(parse_networks(["10.20.0.0/16"]))
        >>> [policy.allows(ipaddress.ip_address(a)) for a in
        ...  ("93.184.215.14", "169.254.169.254", "127.0.0.1", "10.20.1.5", "10.21.0.1")]
        [True, False, False, True, False]
        """
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(address in network for network in self.allowed_networks):
            return True
        return address.is_global and not address.is_multicast

    def refusal(self, host: str, addresses: Sequence[Address]) -> str | None:
        """Why a connection to ``host`` (resolved to ``addresses``) is refused, or None."""
        for address in addresses:
            if not self.allows(address):
                shown = host if host == str(address) else f"{host} ({address})"
                return (
                    f"webhook host {shown} is not a public address (loopback, private, "
                    "link-local or reserved); the operator can allow its network with "
                    "FEDPM_SERVE_WEBHOOK_ALLOWED_NETWORKS"
                )
        return None

    def check_url(self, url: str) -> str | None:
        """Why a webhook ``url`` is refused, or None; a name that does not resolve passes.

        A name that does not resolve now (a plant's DNS not reachable from here yet) is
        accepted: every delivery checks again when it connects.
        """
        host = urlsplit(url).hostname
        if not host:
            return None
        literal = _literal(host)
        if literal is not None:
            return self.refusal(host, [literal])
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return None
        return self.refusal(host, [_address(str(info[4][0])) for info in infos])


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _address(text: str) -> Address:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")


class GuardedBackend(AsyncNetworkBackend):
    """httpcore's network backend that connects only to addresses the policy allows.

    ``connect_tcp`` resolves the host itself, checks every address, and connects to the
    first that answers; TLS still verifies the certificate against the host *name*
    (httpcore passes it to ``start_tls`` separately).
    """

    def __init__(self, policy: EgressPolicy, inner: AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> AsyncNetworkStream:
        """Resolve ``host``, refuse it if any address is not allowed, else connect."""
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                with anyio.fail_after(timeout):
                    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, TimeoutError) as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            addresses = list(dict.fromkeys(_address(str(info[4][0])) for info in infos))
        refusal = self.policy.refusal(host, addresses)
        if refusal is not None:
            raise EgressRefusedError(refusal)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None  # getaddrinfo returns at least one address or raises
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> AsyncNetworkStream:
        """Refused: webhooks go over TCP."""
        raise EgressRefusedError("webhooks are not delivered over Unix sockets")

    async def sleep(self, seconds: float) -> None:
        """Sleep as the wrapped backend does."""
        await self.inner.sleep(seconds)


def guarded_transport(policy: EgressPolicy) -> httpx.AsyncHTTPTransport:
    """An httpx transport (TLS verified, HTTP/1.1) whose connections pass :class:`GuardedBackend`.

    httpx takes no network backend itself, so its connection pool is replaced by one built
    with the same settings httpx uses by default plus the guarded backend.
    """
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(  # see the docstring
        ssl_context=httpx.create_ssl_context(),
        max_connections=100,  # httpx's default limits
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=GuardedBackend(policy),
    )
    return transport
