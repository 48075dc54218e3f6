"""The normalised view of a request path: what a decoding, normalising upstream routes on.

coxp forwards the path byte for byte, but most upstreams (nginx, Apache, Tomcat, Express,
Starlette...) decode and normalise it before they route, each a little differently. Routes are
therefore matched on both the raw path and this normalised form (see `proxy.routing`); a request
whose two views select different routes is refused, so no route's policy can be borrowed by
spelling another route's path differently.
"""
from __future__ import annotations

import re

# A `%` not followed by two hex digits (RFC 3986 §2.1: pct-encoded = "%" HEXDIG HEXDIG).
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_PARAMS = re.compile(r";[^/]*")
_SLASHES = re.compile(r"/{2,}")
# What a path needs to contain for its normalised form to differ from it; the usual path has none.
_MAY_CHANGE = re.compile(r"%|\\|;|//|/\.(?:\.)?(?:/|$)")


class MalformedEscape(ValueError):
    """A `%` in the path that does not start a `%XX` escape."""


def normalised_path(path: str) -> str:
    """The path as a decoding, normalising server reads it, in this order: every `%XX` decoded
    once (`%252f` becomes the text `%2f`, never `/`), `\\` read as `/` (IIS, Tomcat on Windows),
    `;params` dropped from each segment (Tomcat, Jetty), dot segments removed (RFC 3986
    §5.2.4), runs of `/` merged (nginx's `merge_slashes`). `path` has no query.

    Decoded bytes become latin-1 characters, like the raw path: globs are ASCII, and `*` spans
    any character. Raises MalformedEscape for a `%` that is not `%XX`.
    """
    if _MAY_CHANGE.search(path) is None:
        return path
    if "%" in path:
        if _BAD_ESCAPE.search(path) is not None:
            raise MalformedEscape(path)
        path = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), path)
    path = path.replace("\\", "/")
    if ";" in path:
        path = _PARAMS.sub("", path)
    return _SLASHES.sub("/", remove_dot_segments(path))


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, step by step (the input buffer is consumed from the left)."""
    out: list[str] = []
    rest = path
    while rest:
        if rest.startswith("../"):  # A
            rest = rest[3:]
        elif rest.startswith("./") or rest.startswith("/./"):
            rest = rest[2:]
        elif rest == "/.":
            rest = "/"
        elif rest.startswith("/../"):  # C
            rest = rest[3:]
            if out:
                out.pop()
        elif rest == "/..":
            rest = "/"
            if out:
                out.pop()
        elif rest in (".", ".."):  # D
            rest = ""
        else:  # E: the first segment, with its leading "/", moves to the output
            cut = rest.find("/", 1)
            if cut < 0:
                cut = len(rest)
            out.append(rest[:cut])
            rest = rest[cut:]
    return "".join(out)
