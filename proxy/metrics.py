"""Counters declared in one place (as Envoy does): what the admin /metrics endpoint exposes."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "coxp_requests", "Requests served, by route, CORS classification and status",
            ["route", "cors", "status"], registry=self.registry,
        )
        self._bad_requests = Counter(
            "coxp_bad_requests", "Requests refused before routing, by status", ["status"], registry=self.registry
        )
        self._duration = Histogram(
            "coxp_request_duration_seconds", "Time from request head to the end of the response", ["route"],
            registry=self.registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self._reports = Counter(
            "coxp_reports", "Violation reports received by the collector, by report type and disposition",
            ["type", "disposition"], registry=self.registry,
        )
        self._shadow_diffs = Counter(
            "coxp_shadow_diffs", "Requests the candidate CORS table ([cors.shadow]) decides differently, "
            "by route and both decisions", ["route", "live", "shadow"], registry=self.registry,
        )
        # `labels()` validates and locks on every call; the label sets are few, so their
        # children are looked up once and kept.
        self._request_children: dict[tuple[str, str, int], object] = {}
        self._duration_children: dict[str, object] = {}

    def observe(self, route: str, cors: str, status: int, duration_ms: float) -> None:
        key = (route, cors, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(route, cors, str(status))
        counter.inc()
        histogram = self._duration_children.get(route)
        if histogram is None:
            histogram = self._duration_children[route] = self._duration.labels(route)
        histogram.observe(duration_ms / 1000)

    def report(self, report_type: str, disposition: str) -> None:
        self._reports.labels(report_type, disposition).inc()

    def shadow_diff(self, route: str, live: str, shadow: str) -> None:
        self._shadow_diffs.labels(route, live, shadow).inc()

    def bad_request(self, status: int) -> None:
        self._bad_requests.labels(str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
