"""`coxp health`: ask a running coxp's admin listener whether it serves (the container HEALTHCHECK).

Only `[admin] listen` is read from the config file, not the whole file validated: a running coxp
keeps serving its old config when the file on disk becomes invalid (`--watch`, SIGHUP), and it is
still healthy then.
"""
from __future__ import annotations

import http.client
import tomllib

from proxy.config.reading import Invalid
from proxy.config.values import parse_endpoint
from proxy.model import Endpoint

TIMEOUT = 3.0  # seconds; a health check that hangs is a failed one

# A listener on every interface is reached on loopback.
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def admin_endpoint(path: str) -> Endpoint:
    """The `[admin] listen` address of the config file at `path`; ValueError naming the problem."""
    try:
        with open(path, "rb") as file:
            listen = tomllib.load(file).get("admin", {}).get("listen")
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"{path}: {error}") from None
    if not isinstance(listen, str):
        raise ValueError(f"{path}: no [admin] listen address to ask")
    try:
        return parse_endpoint(listen)
    except Invalid as error:
        raise ValueError(f"{path}: admin.listen: {error}") from None


def probe(endpoint: Endpoint, target: str) -> tuple[int, str]:
    """GET `target` from the admin listener at `endpoint`: (status, first line of the body)."""
    host = _ANY.get(endpoint.host, endpoint.host)
    connection = http.client.HTTPConnection(host, endpoint.port, timeout=TIMEOUT)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read(200).decode("utf-8", "replace").strip()
    finally:
        connection.close()
