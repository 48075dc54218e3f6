#!/usr/bin/env python3
"""A CGI program (RFC 3875) serving endpoints.py under Apache: the body is exactly
CONTENT_LENGTH bytes of stdin (RFC 3875 §4.2), so a chunked request without it has none."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from urllib.parse import parse_qsl  # noqa: E402

from endpoints import answer  # noqa: E402

length = int(os.environ.get("CONTENT_LENGTH") or 0)
body = sys.stdin.buffer.read(length) if length else b""
origin = f"http://{os.environ['SERVER_NAME']}:{os.environ['SERVER_PORT']}"
status, headers, content = answer(os.environ["REQUEST_METHOD"], os.environ.get("PATH_INFO", ""),
                                  dict(parse_qsl(os.environ.get("QUERY_STRING", ""))), body, origin)
out = sys.stdout.buffer
out.write(f"Status: {status}\r\n".encode())
for name, value in headers:
    out.write(f"{name}: {value}\r\n".encode())
out.write(b"\r\n")
if os.environ["REQUEST_METHOD"] != "HEAD":
    out.write(content)
