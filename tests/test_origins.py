"""Origin patterns: validation (errors, warnings), normalisation and matching; plus fuzzing."""
from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.origins import compile_origins, credential_warnings, normalize_origin


def errors_of(*patterns: str, regexes: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return compile_origins(list(patterns), list(regexes))[1]


def warnings_of(*patterns: str, regexes: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    matcher, errors, warnings = compile_origins(list(patterns), list(regexes))
    assert errors == []
    return warnings


# ---------------------------------------------------------------------------------------------
# Errors: (pattern, words the message must contain)

ERRORS = [
    ("https://a.test/", "has a path"),
    ("https://a.test/x", "has a path"),
    ("https://a.test?q=1", "query"),
    ("https://a.test#f", "fragment"),
    ("https://user@a.test", "userinfo"),
    ("https://user:pw@a.test", "userinfo"),
    ("ftp://a.test", "unknown scheme"),
    ("ws://a.test", "unknown scheme"),
    ("file://a.test", "null"),
    ("https://", "empty host"),
    ("https://:8080", "empty host"),
    ("https://a.test:", "invalid port"),
    ("https://a.test:0", "invalid port"),
    ("https://a.test:080", "invalid port"),
    ("https://a.test:65536", "invalid port"),
    ("https://a.test:http", "invalid port"),
    ("https://*.com", "public suffix"),
    ("https://*.co.uk", "public suffix"),
    ("http://*.jp:*", "public suffix"),
    ("https://*", "wildcard needs a domain"),
    ("https://a.*.test", "leftmost"),
    ("https://*a.test", "leftmost"),
    ("https://*.*.a.test", "leftmost"),
    ("https://*.127.0.0.1", "not an IP"),
    ("https://*.[::1]", "invalid host"),
    ("https://a_b..test", "invalid host"),
    ("https://-a.test!", "invalid host"),
    ("https://127.1", "invalid IPv4"),
    ("https://[::g]", "invalid IPv6"),
    ("https://[::1", "bracket"),
    ("https://::1", "brackets"),
    ("a.test", "no scheme"),
    ("*.a.test", "no scheme"),
    ("", "not an origin"),
    (" https://a.test", "whitespace"),
    ("https://a.test ", "whitespace"),
    ("NULL", "lower case"),
    ("chrome-extension://abc:1", "extension origin"),
    ("chrome-extension://*.abc", "extension origin"),
]


@pytest.mark.parametrize(("pattern", "words"), ERRORS, ids=[e[0] or "empty" for e in ERRORS])
def test_pattern_errors(pattern: str, words: str) -> None:
    errors = errors_of(pattern)
    assert len(errors) == 1, errors
    key, message = errors[0]
    assert key == "allow_origins[0]"
    assert words in message
    assert message.startswith(f'"{pattern}"') or pattern in ("", "NULL") or "null" in message.lower()


def test_an_origin_with_a_path_is_told_what_an_origin_is() -> None:
    assert errors_of("https://a.test/")[0][1].startswith(
        '"https://a.test/" has a path; an origin is scheme://host[:port]')


def test_every_error_is_reported_with_its_index() -> None:
    errors = errors_of("https://ok.test", "https://a.test/", "ftp://x.test", regexes=("(",))
    assert [k for k, _ in errors] == ["allow_origins[1]", "allow_origins[2]", "allow_origin_regex[0]"]


def test_star_must_be_alone() -> None:
    assert errors_of("*") == []
    assert [k for k, _ in errors_of("https://a.test", "*")] == ["allow_origins[1]"]
    errors = errors_of("*", regexes=("https://.*",))
    assert [k for k, _ in errors] == ["allow_origins[0]"] and "only entry" in errors[0][1]


def test_invalid_regex() -> None:
    errors = errors_of(regexes=("https://(a|b",))
    assert errors[0][0] == "allow_origin_regex[0]" and "invalid regular expression" in errors[0][1]


def test_non_string_entries() -> None:
    matcher, errors, _ = compile_origins([1], [None])  # type: ignore[list-item]
    assert errors == [("allow_origins[0]", "must be a string"), ("allow_origin_regex[0]", "must be a string")]


# ---------------------------------------------------------------------------------------------
# Accepted, with or without a warning

ACCEPTED = [
    ("https://a.test", None),
    ("http://localhost:3000", None),
    ("http://localhost:*", None),
    ("http://*.localhost:*", None),
    ("https://*.test", None),  # not on the Public Suffix List
    ("https://*.internal", None),
    ("https://*.localhost", None),
    ("https://*.example.co.uk", None),
    ("http://127.0.0.1:8080", None),
    ("http://127.0.0.1:*", None),
    ("http://[::1]:8080", None),
    ("https://my_host.test", None),
    ("chrome-extension://abcdefghijklmnop", None),
    ("moz-extension://0f3e2d1c-aaaa-bbbb-cccc-123456789abc", None),
    ("null", "opaque origin"),
    ("HTTPS://A.Test", "case-insensitively"),
    ("https://a.test:443", "default"),
    ("http://a.test:80", "default"),
    ("https://*.github.io", "private section"),
    ("https://bücher.test", "xn--bcher-kva.test"),
    ("http://[0:0:0::1]", "[::1]"),
]


@pytest.mark.parametrize(("pattern", "warning"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_patterns(pattern: str, warning: str | None) -> None:
    warnings = warnings_of(pattern)
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0][0] == "allow_origins[0]" and warning in warnings[0][1]


def test_duplicates_warn() -> None:
    warnings = warnings_of("https://a.test", "https://A.test:443")
    assert [k for k, _ in warnings] == ["allow_origins[1]", "allow_origins[1]"]
    assert "repeats allow_origins[0]" in warnings[1][1]


def test_upper_case_regex_warns() -> None:
    assert warnings_of(regexes=(r"https://App\.test",))[0][0] == "allow_origin_regex[0]"
    assert warnings_of(regexes=(r"https://\w+\.test",)) == []
    assert warnings_of(regexes=(r"(?i)https://App\.test",)) == []


@pytest.mark.parametrize(("pattern", "warned"), [
    ("http://a.test", True),
    ("http://*.a.test", True),
    ("http://a.test:*", True),
    ("null", True),
    ("https://a.test", False),
    ("http://localhost:3000", False),
    ("http://*.localhost:*", False),
    ("http://127.0.0.1:8080", False),
    ("http://[::1]:8080", False),
    ("https://a.test/", False),  # invalid: reported by compile_origins, not here
    ("*", False),
])
def test_credential_warnings(pattern: str, warned: bool) -> None:
    warnings = credential_warnings([pattern])
    assert bool(warnings) == warned
    if warned:
        assert warnings[0][0] == "allow_origins[0]" and "credentials" in warnings[0][1]


def test_nothing_allowed_is_visible_to_the_config_layer() -> None:
    assert compile_origins([], [])[0].allows_nothing
    assert not compile_origins(["null"], [])[0].allows_nothing
    assert not compile_origins([], ["x"])[0].allows_nothing


# ---------------------------------------------------------------------------------------------
# Normalisation and matching

NORMALIZE = [
    ("https://a.test", "https://a.test"),
    ("HTTPS://A.TEST", "https://a.test"),
    ("https://a.test:443", "https://a.test"),
    ("http://a.test:443", "http://a.test:443"),
    ("http://a.test:80", "http://a.test"),
    ("http://[0:0::1]:8080", "http://[::1]:8080"),
    ("http://a.test.", "http://a.test."),
    ("null", "null"),
    ("chrome-extension://abc", "chrome-extension://abc"),
    ("https://a.test/", None),
    ("https://a.test/x", None),
    ("https://u@a.test", None),
    ("https://a.test ", None),
    (" https://a.test", None),
    ("https://a test", None),
    ("https://a.test, https://b.test", None),
    ("", None),
    ("Null", None),
    ("https://", None),
    ("https://.a.test", None),
    ("https://a..test", None),
    ("https://a.test:0", None),
    ("https://a.test:080", None),
    ("https://a.test:65536", None),
    ("https://a.test:", None),
    ("https://[::g]", None),
    ("https://bücher.test", None),
    ("//a.test", None),
]


@pytest.mark.parametrize(("value", "expected"), NORMALIZE, ids=[n[0] or "empty" for n in NORMALIZE])
def test_normalize_origin(value: str, expected: str | None) -> None:
    assert normalize_origin(value) == expected


MATCHER = compile_origins(
    ["https://app.test", "https://*.example.test", "https://*.example.test:8443", "http://localhost:*",
     "http://*.dev.localhost:*", "null", "http://[::1]:9000", "chrome-extension://abc"],
    [r"https://pr-\d+\.preview\.test"],
)[0]

MATCHES = [
    ("https://app.test", True),
    ("https://APP.TEST:443", True),
    ("https://app.test:444", False),
    ("http://app.test", False),
    ("https://x.app.test", False),
    ("https://a.example.test", True),
    ("https://a.b.example.test", True),
    ("https://example.test", False),
    ("https://aexample.test", False),
    ("https://a.example.test:8443", True),
    ("https://a.example.test:9443", False),
    ("https://example.test:8443", False),
    ("http://localhost", True),
    ("http://localhost:1", True),
    ("http://localhost:65535", True),
    ("http://x.localhost:1", False),
    ("http://a.dev.localhost", True),
    ("http://a.b.dev.localhost:5173", True),
    ("http://dev.localhost:5173", False),
    ("null", True),
    ("http://[::1]:9000", True),
    ("http://[::1]", False),
    ("chrome-extension://abc", True),
    ("chrome-extension://abd", False),
    ("https://pr-12.preview.test", True),
    ("https://PR-12.preview.test", True),
    ("https://pr-12.preview.test.evil.test", False),
    ("https://pr-x.preview.test", False),
    ("https://app.test/", False),
    ("https://app.test, https://app.test", False),
    ("", False),
]


@pytest.mark.parametrize(("origin", "expected"), MATCHES, ids=[m[0] or "empty" for m in MATCHES])
def test_matches(origin: str, expected: bool) -> None:
    assert MATCHER.matches(origin) is expected


def test_star_matcher_lets_everything_through() -> None:
    star = compile_origins(["*"], [])[0]
    assert star.allows_any
    for value in ("https://a.test", "null", "", "garbage value", "https://a.test/"):
        assert star.matches(value)


def test_null_only_when_listed() -> None:
    assert not compile_origins(["https://a.test"], [".*"])[0].matches("null")


# ---------------------------------------------------------------------------------------------
# Fuzzing the parsers

origin_chars = string.ascii_letters + string.digits + ":/.*-_[]@?#% \t,"
fuzz = settings(max_examples=400, deadline=None)


@fuzz
@given(st.text(alphabet=origin_chars, max_size=40) | st.text(max_size=40))
def test_fuzz_normalize_origin(value: str) -> None:
    normalized = normalize_origin(value)
    if normalized is not None:
        assert normalize_origin(normalized) == normalized  # idempotent
        assert normalized == normalized.lower()
        assert " " not in normalized and "/" not in normalized.split("://", 1)[-1]


@fuzz
@given(st.lists(st.text(alphabet=origin_chars, max_size=30) | st.text(max_size=30), max_size=4),
       st.lists(st.text(max_size=10), max_size=2), st.text(max_size=40))
def test_fuzz_compile_origins_never_crashes(patterns, regexes, request_origin) -> None:
    matcher, errors, warnings = compile_origins(patterns, regexes)
    for key, message in errors + warnings:
        assert key.startswith(("allow_origins[", "allow_origin_regex[")) and message
    matcher.matches(request_origin)
    credential_warnings(patterns)


labels = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=10).filter(
    lambda s: not s[0].isdigit())


@fuzz
@given(scheme=st.sampled_from(["http", "https"]), sub=st.lists(labels, min_size=1, max_size=3),
       domain=st.lists(labels, min_size=1, max_size=2), port=st.none() | st.integers(1, 65535),
       upper=st.booleans())
def test_fuzz_patterns_match_what_they_describe(scheme, sub, domain, port, upper) -> None:
    base = ".".join(domain) + ".test"
    host = ".".join(sub) + "." + base
    port_text = "" if port is None else f":{port}"
    exact, errors, _ = compile_origins([f"{scheme}://{host}{port_text}"], [])
    wildcard, werrors, _ = compile_origins([f"{scheme}://*.{base}{port_text}"], [])
    any_port, perrors, _ = compile_origins([f"{scheme}://{host}:*"], [])
    assert errors == werrors == perrors == []
    request = f"{scheme}://{host}{port_text}"
    if upper:
        request = request.upper()
    assert exact.matches(request) and wildcard.matches(request) and any_port.matches(request)
    assert not wildcard.matches(f"{scheme}://{base}{port_text}")  # never the apex
    other = "https" if scheme == "http" else "http"
    assert not exact.matches(f"{other}://{host}{port_text}")
    assert not exact.matches(request + "/")
