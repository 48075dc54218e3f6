"""Violation reports as browsers send them, turned into decision-log fields. Pure: no I/O.

Two wire formats reach a collector:

- the Reporting API (W3C Reporting API §3.3, "Send reports"): `Content-Type:
  application/reports+json`, a JSON array of report objects `{type, age, url, user_agent,
  body}` — COOP, COEP, CSP level 3, deprecation and intervention reports all come this way;
- the legacy CSP `report-uri` (CSP level 2 §7.1): `application/csp-report` (some senders use
  `application/json`), one object `{"csp-report": {...}}` with hyphenated keys.

`answer_before_body` judges a request by its head alone; `parse_reports` validates a whole body
before anything is logged: a body that is not what its type promises is refused as a whole, so
a malformed batch never leaves half of itself in the log.
"""
from __future__ import annotations

from typing import Any, Final, NamedTuple

import orjson

from proxy.http1 import text_body

REPORTS_JSON: Final = "application/reports+json"
LEGACY_TYPES: Final = frozenset({"application/csp-report", "application/json"})
ACCEPTED_TYPES: Final = (REPORTS_JSON, *sorted(LEGACY_TYPES))
MAX_REPORTS: Final = 100  # per body; Chromium sends at most 100 reports per upload
MAX_STRING: Final = 2048  # characters kept of any string of a report
# Reports nest three levels deep; a deeper body is an attack on the parser, not a report.
MAX_DEPTH: Final = 16

DISPOSITIONS: Final = frozenset({"enforce", "reporting"})
# The report types browsers send (Reporting API and the specifications that use it). Only these
# become metric labels: a label value chosen by any client would let it grow /metrics without
# bound. Every type is still logged as sent.
KNOWN_TYPES: Final = frozenset({
    "coep", "coop", "csp-violation", "deprecation", "intervention", "crash",
    "permissions-policy-violation", "document-policy-violation", "network-error",
    "integrity-violation",
})


ALLOW: Final = "POST, OPTIONS"
# Browsers deliver reports from any page, cross-origin included (Reporting API §3.3: the upload
# is a CORS request, preflighted since its type is not CORS-safelisted), without credentials;
# so any origin may post, and no cookie is ever involved.
CORS_ANSWER: Final = (("Access-Control-Allow-Origin", "*"),)
PREFLIGHT_ANSWER: Final = CORS_ANSWER + (
    ("Access-Control-Allow-Methods", ALLOW),
    ("Access-Control-Allow-Headers", "Content-Type"),
    ("Access-Control-Max-Age", "86400"),
    ("Allow", ALLOW),
)


class CollectorAnswer(NamedTuple):
    """What the collector answers before reading a body: `reason` is the one-line text body
    (empty for the 204), `headers` those of the answer besides the body's."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]


def answer_before_body(method: str, content_type: str | None, content_length: int | None,
                       max_body_bytes: int) -> CollectorAnswer | None:
    """The collector's answer to a request it can judge by its head alone: an `OPTIONS`
    (preflight or not), another method than `POST`, a type that is no report type, a
    `Content-Length` over the limit. None: read the body, then `parse_reports` decides."""
    if method == "OPTIONS":
        return CollectorAnswer(204, "", PREFLIGHT_ANSWER)
    if method != "POST":
        return CollectorAnswer(405, f"method-not-allowed: the report collector takes {ALLOW}",
                               CORS_ANSWER + (("Allow", ALLOW),))
    try:
        check_media_type(media_type(content_type))
    except ReportRefused as refused:
        return CollectorAnswer(refused.status, refused.reason, CORS_ANSWER)
    if content_length is not None and content_length > max_body_bytes:
        return CollectorAnswer(413, too_large(max_body_bytes), CORS_ANSWER)
    return None


def is_collector_path(settings: Any, path: str) -> bool:
    """Whether a request path (raw, without the query) is the collector's; `settings` is the
    config's `reports` (None: no collector)."""
    return settings is not None and path == settings.path


def field_value(headers: list[tuple[str, str]], lower_name: str) -> str | None:
    """The first value of a request header (names compared case-insensitively)."""
    for name, value in headers:
        if name.lower() == lower_name:
            return value
    return None


def collector_response(answer: CollectorAnswer) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and body of a collector answer: a one-line text body naming the reason."""
    body = text_body(answer.reason)
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))] if body else []
    return headers + list(answer.headers), body


def too_large(max_body_bytes: int) -> str:
    return f"body-too-large: over {max_body_bytes} bytes"


class ReportRefused(Exception):
    """The body cannot be taken: answered with `status`; `reason` names why (one line)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Report(NamedTuple):
    """One report, as the decision log's `report` event carries it."""

    type: str
    url: str | None  # the document the report is about
    disposition: str | None  # enforce | reporting
    blocked_url: str | None
    effective_policy: str | None
    user_agent: str | None
    body: dict[str, Any] | None

    def metric_labels(self) -> tuple[str, str]:
        """(`type`, `disposition`) for `coxp_reports_total`: unknown types count as `other`,
        an absent disposition as `none`."""
        return (self.type if self.type in KNOWN_TYPES else "other", self.disposition or "none")


def media_type(content_type: str | None) -> str:
    """The media type of a `Content-Type` value, lower-cased, without parameters (RFC 9110 §8.3.1)."""
    if content_type is None:
        return ""
    return content_type.split(";", 1)[0].strip(" \t").lower()


def check_media_type(content_type: str) -> None:
    """ReportRefused(415) unless `content_type` (from `media_type`) is a report type."""
    if content_type != REPORTS_JSON and content_type not in LEGACY_TYPES:
        raise ReportRefused(415, f"unsupported-media-type: send {' or '.join(ACCEPTED_TYPES)}")


def parse_reports(content_type: str, body: bytes, request_user_agent: str | None) -> list[Report]:
    """The reports in `body`, sent as `content_type` (a media type from `media_type`).

    Raises `ReportRefused`: 415 for another type, 400 for malformed JSON or the wrong shape
    (not an array for `reports+json`, not an object for a legacy report), 413 for more than
    `MAX_REPORTS` reports.
    """
    check_media_type(content_type)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ReportRefused(400, "malformed-json: the body is not JSON") from None
    if _too_deep(data):
        raise ReportRefused(400, f"wrong-shape: nested deeper than {MAX_DEPTH} levels")
    if content_type == REPORTS_JSON:
        if not isinstance(data, list):
            raise ReportRefused(400, "wrong-shape: application/reports+json is a JSON array of reports")
        if len(data) > MAX_REPORTS:
            raise ReportRefused(413, f"too-many-reports: {len(data)} reports, at most {MAX_REPORTS} per body")
        return [_reporting_api(item, i, request_user_agent) for i, item in enumerate(data)]
    if not isinstance(data, dict):
        raise ReportRefused(400, "wrong-shape: a legacy report is one JSON object")
    if isinstance(data.get("csp-report"), dict):
        return [_legacy_csp(data["csp-report"], request_user_agent)]
    # A Reporting API report posted alone as application/json: read it the same way.
    return [_reporting_api(data, 0, request_user_agent)]


def _too_deep(value: Any) -> bool:
    """Iteratively, so a hostile nesting depth cannot exhaust the interpreter's stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > MAX_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False


def _reporting_api(item: Any, index: int, request_user_agent: str | None) -> Report:
    """Reporting API §2.1 report: `type`, `url`, `user_agent`, `body`."""
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        raise ReportRefused(400, f"wrong-shape: report [{index}] is not an object with a string \"type\"")
    body = item.get("body")
    if body is not None and not isinstance(body, dict):
        raise ReportRefused(400, f"wrong-shape: report [{index}] has a \"body\" that is not an object")
    fields = body or {}
    return Report(
        type=_cut(item["type"]),
        url=_string(item.get("url")),
        disposition=_disposition(fields.get("disposition")),
        # COEP and CSP3 name it blockedURL; COOP has no blocked resource.
        blocked_url=_string(fields.get("blockedURL")),
        # COOP's effectivePolicy; CSP3 reports carry effectiveDirective instead.
        effective_policy=_string(fields.get("effectivePolicy", fields.get("effectiveDirective"))),
        user_agent=_string(item.get("user_agent")) or _string(request_user_agent),
        body=_cut_all(body) if body is not None else None,
    )


def _legacy_csp(report: dict[str, Any], request_user_agent: str | None) -> Report:
    """CSP level 2 §7.1 `csp-report` object: hyphenated keys, `disposition` `enforce`/`report`."""
    disposition = report.get("disposition")
    return Report(
        type="csp-violation",
        url=_string(report.get("document-uri")),
        disposition="reporting" if disposition == "report" else _disposition(disposition),
        blocked_url=_string(report.get("blocked-uri")),
        effective_policy=_string(report.get("effective-directive", report.get("violated-directive"))),
        user_agent=_string(request_user_agent),
        body=_cut_all(report),
    )


def _disposition(value: Any) -> str | None:
    return value if value in DISPOSITIONS else None


def _string(value: Any) -> str | None:
    return _cut(value) if isinstance(value, str) else None


def _cut(text: str) -> str:
    return text[:MAX_STRING]


def _cut_all(value: Any) -> Any:
    """`value` with every string (keys included) cut to `MAX_STRING` characters; the depth is
    already bounded by `_too_deep`."""
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, dict):
        return {_cut(k): _cut_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_all(v) for v in value]
    return value
