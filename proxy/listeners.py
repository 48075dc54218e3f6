"""Listening sockets for a `listen` address: one per address its host resolves to, on one port.

`localhost` usually resolves to both `::1` and `127.0.0.1`, and browsers try them in their own
order, so a proxy reached as `http://localhost:PORT` must accept on both. asyncio's own
`create_server(host, 0)` would give each address a different free port; here port 0 picks a
free port on the first address and the others then bind that same port.
"""
from __future__ import annotations

import socket

from proxy.errors import ListenError
from proxy.model import Endpoint

LOOPBACKS = ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1"))
BIND_ATTEMPTS = 5  # port 0: a port free on the first address may be taken on another one


def bind_listeners(listen: Endpoint) -> list[socket.socket]:
    """Bound (not yet listening) TCP sockets for every address of `listen.host`."""
    addresses = _addresses(listen.host)
    attempts = BIND_ATTEMPTS if listen.port == 0 and len(addresses) > 1 else 1
    for attempt in range(1, attempts + 1):
        sockets: list[socket.socket] = []
        port = listen.port
        try:
            for family, host in addresses:
                sockets.append(_bound(family, host, port))
                port = sockets[-1].getsockname()[1]
        except OSError:
            for sock in sockets:
                sock.close()
            if attempt == attempts:
                raise
            continue
        return sockets
    raise AssertionError("unreachable")  # pragma: no cover


def _addresses(host: str) -> list[tuple[int, str]]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ListenError(error, host) from None
    found: list[tuple[int, str]] = [(int(family), str(address[0])) for family, _, _, _, address in infos]
    if host == "localhost":
        # Browsers resolve `localhost` to both loopback addresses themselves, whatever
        # /etc/hosts says (RFC 6761 §6.3: it is always loopback), and try ::1 first.
        found += [(int(family), address) for family, address in LOOPBACKS if _supported(family, address)]
    return list(dict.fromkeys(found))


def _supported(family: int, address: str) -> bool:
    """Whether this host has `address` (IPv6 may be switched off)."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def _bound(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Without V6ONLY an IPv6 socket on `::` would also take the IPv4 port (RFC 3493 §5.3).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ListenError(error, Endpoint(host, port)) from None
    return sock
