"""The WSGI app gunicorn serves in the interop tests (endpoints.py): `/size` is an iterable
without a length, so gunicorn sends it chunked."""
from __future__ import annotations

from http import HTTPStatus
from urllib.parse import parse_qsl

from endpoints import answer


def app(environ, start_response):
    body = environ["wsgi.input"].read()
    origin = f"http://{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
    status, headers, content = answer(environ["REQUEST_METHOD"], environ["PATH_INFO"],
                                      dict(parse_qsl(environ.get("QUERY_STRING", ""))), body, origin)
    phrase = HTTPStatus(status).phrase
    start_response(f"{status} {phrase}", headers)
    if environ["PATH_INFO"] == "/size":
        return (content[i:i + 16384] for i in range(0, len(content), 16384))
    return [content]
