"""The normalised view of a request path (`proxy.paths`)."""
from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.paths import MalformedEscape, normalised_path, remove_dot_segments

NORMALISED = [
    ("/", "/"),
    ("/admin/x", "/admin/x"),
    ("/%61dmin/x", "/admin/x"),
    ("//admin/x", "/admin/x"),
    ("/admin%2fx", "/admin/x"),
    ("/admin%2Fx", "/admin/x"),
    ("/api/..%2fadmin/x", "/admin/x"),
    ("/api/%2e%2e/admin/x", "/admin/x"),
    ("/api/..\\admin/x", "/admin/x"),
    ("/api\\..\\admin", "/admin"),
    ("/api/..;/admin/x", "/admin/x"),  # Tomcat: ";" params dropped before the dot segment is seen
    ("/admin;jsessionid=1/x;y", "/admin/x"),
    ("/a/./b/../c", "/a/c"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/../../x", "/x"),
    ("/.well-known/x", "/.well-known/x"),
    ("/a..b/c.", "/a..b/c."),
    # Decoded once: %252f is the text %2f, not "/".
    ("/a%252fb", "/a%2fb"),
    ("/a%25", "/a%"),
    # Decoded bytes stay one character each (latin-1), like the raw path.
    ("/caf%C3%A9", "/caf\xc3\xa9"),
    # RFC 3986 §5.2.4 first, then runs of "/" merged.
    ("/a//../b", "/a/b"),
    ("/a///b//", "/a/b/"),
]


@pytest.mark.parametrize("raw, expected", NORMALISED)
def test_normalised_path(raw, expected):
    assert normalised_path(raw) == expected


@pytest.mark.parametrize("raw", ["/a%", "/a%2", "/a%zz", "/%g0", "/a%%41"])
def test_a_malformed_escape_is_refused(raw):
    with pytest.raises(MalformedEscape):
        normalised_path(raw)


def test_an_unchanged_path_is_returned_as_is():
    path = "/api/v1/orders/7"
    assert normalised_path(path) is path


@pytest.mark.parametrize("path, expected", [
    # RFC 3986 §5.2.4's own examples, and the edge cases of its steps A-E.
    ("/a/b/c/./../../g", "/a/g"),
    ("mid/content=5/../6", "mid/6"),
    ("../x", "x"), ("./x", "x"), (".", ""), ("..", ""), ("/..", "/"), ("/.", "/"),
])
def test_remove_dot_segments(path, expected):
    assert remove_dot_segments(path) == expected


SEGMENT = st.sampled_from(["a", "b", ".", "..", "", "%2e", "%2f", ";x", "\\", "c;d", "%41"])


@settings(max_examples=500, deadline=None)
@given(st.lists(SEGMENT, max_size=8))
def test_the_normalised_path_is_a_fixed_point_without_dot_segments_or_double_slashes(segments):
    raw = "/" + "/".join(segments)
    normal = normalised_path(raw)
    assert normal.startswith("/") and "//" not in normal and "\\" not in normal and ";" not in normal
    assert not any(part in ("", ".", "..") for part in normal.split("/")[1:-1])
    if "%" not in normal:  # decoding once: a decoded "%" may start another escape
        assert normalised_path(normal) == normal
    # Without escapes, "\\", ";" or "//" it agrees with POSIX path normalisation (which merges
    # "/" before it resolves "..", where RFC 3986 resolves first), trailing "/" aside.
    if not any(c in raw for c in "%\\;") and "//" not in raw:
        expected = posixpath.normpath(raw)
        assert normal in (expected, expected + "/") and normal.rstrip("/") == expected.rstrip("/")
