"""Python's http.server speaking HTTP/1.0 (its default), as legacy Python backends do: a body
is read by its Content-Length only (a chunked body is not understood), a response without a
length ends when the connection closes.  Usage: python http10.py PORT"""
from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from endpoints import answer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def handle_any(self) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        origin = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
        status, headers, content = answer(self.command, url.path, dict(parse_qsl(url.query)), body, origin)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if url.path != "/size" and status not in (204, 304):
            self.send_header("Content-Length", str(len(content)))  # /size: delimited by closing
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(content)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = handle_any

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
