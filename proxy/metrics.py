"""Every metric the admin /metrics endpoint exposes, each declared once (as Envoy does).

Only a process whose config has an `[admin]` listener imports this module and counts: nothing
else can read the metrics (docs/DECISIONS.md), and prometheus-client costs ~4 MiB of memory per
process and a few microseconds per request.

With `workers = N` each worker counts in its own memory-mapped files in one directory that all of
them share (prometheus-client's multiprocess mode, switched on by `share_between_processes` in the
parent before it forks); /metrics, served by one worker, sums the files of all of them. Counters
of a worker that died stay in the sum, so totals never go backwards; the in-flight gauge counts
live workers only (the parent calls `worker_exited`).

The config metrics (reloads, last reload, the loaded file's hash) describe the process that
serves /metrics: every worker loads the same file at the same moment, and a count summed over
workers would say "two reloads" for one.

To add a metric: one declaration in `Metrics.__init__` with `registry=declare_in`; count
with `metrics.<name>.labels(...).inc()` (labelled counters appear once something was counted).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class SharedValues:
    """The workers' metric values in files of one directory (`share_between_processes`)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def worker_exited(self, pid: int) -> None:
        """A worker is gone: its share of the live gauges (requests in flight) no longer counts."""
        multiprocess.mark_process_dead(pid, self.directory)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def share_between_processes() -> SharedValues:
    """Before forking workers: make every metric created from now on live in files of a new
    directory. OSError when no temporary directory is writable (a read-only root filesystem
    needs a writable volume at $TMPDIR or /tmp)."""
    try:
        directory = tempfile.mkdtemp(prefix="coxp-metrics-")
    except OSError as error:
        raise OSError(error.errno, f"workers > 1 share their metrics through files and need a writable temporary "
                                   f"directory ($TMPDIR or /tmp): {error.strerror}") from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # where prometheus-client's values write
    values.ValueClass = values.MultiProcessValue()
    return SharedValues(directory)


def _shared_directory() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") if values.ValueClass is not values.MutexValue else None


class ConfigMetrics(Collector):
    """The config metrics, kept in this process (see the module docstring)."""

    def __init__(self, sha256: str) -> None:
        self.reloads = {"ok": 0, "error": 0}
        self.last_reload_successful = True
        self.sha256 = sha256

    def reloaded(self, sha256: str) -> None:
        self.reloads["ok"] += 1
        self.last_reload_successful = True
        self.sha256 = sha256

    def reload_failed(self) -> None:
        self.reloads["error"] += 1
        self.last_reload_successful = False

    def collect(self) -> Iterator[Metric]:
        reloads = CounterMetricFamily(
            "coxp_config_reloads", "Config reloads (SIGHUP, --watch, POST /reload), by result", labels=["result"]
        )
        for result, count in self.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        yield GaugeMetricFamily(
            "coxp_config_last_reload_successful", "1 if the last reload succeeded (or none was tried), else 0",
            value=int(self.last_reload_successful),
        )
        info = GaugeMetricFamily("coxp_config_info", "The config being served: SHA-256 of its file", labels=["sha256"])
        info.add_metric([self.sha256], 1)
        yield info


class Metrics:
    def __init__(self, config_sha256: str = "") -> None:
        self._registry = CollectorRegistry()
        shared = _shared_directory()
        if shared is None:
            self._declare_in: CollectorRegistry | None = self._registry
        else:  # the values are in the shared files; the collector reads those of every worker
            self._declare_in = None
            multiprocess.MultiProcessCollector(self._registry, path=shared)
        declare_in = self._declare_in
        self.requests = Counter(
            "coxp_requests", "Requests served, by route, CORS classification and status",
            ["route", "cors", "status"], registry=declare_in,
        )
        self.bad_requests = Counter(
            "coxp_bad_requests", "Requests refused before routing, by reason", ["reason"], registry=declare_in
        )
        self.duration = Histogram(
            "coxp_request_duration_seconds", "Time from request head to the end of the response", ["route"],
            registry=declare_in, buckets=DURATION_BUCKETS,
        )
        self.upstream_errors = Counter(
            "coxp_upstream_errors", "Requests the upstream gave no (complete) response to, by route and reason",
            ["route", "reason"], registry=declare_in,
        )
        self.in_flight = Gauge(
            "coxp_in_flight_requests", "Requests being served now", registry=declare_in, multiprocess_mode="livesum"
        )
        self.reports = Counter(
            "coxp_reports", "Violation reports received by the collector, by report type and disposition",
            ["type", "disposition"], registry=declare_in,
        )
        self.shadow_diffs = Counter(
            "coxp_shadow_diffs", "Requests the candidate CORS table ([cors.shadow]) decides differently, "
            "by route and both decisions", ["route", "live", "shadow"], registry=declare_in,
        )
        self.config = ConfigMetrics(config_sha256)
        self._registry.register(self.config)
        # `labels()` validates and locks on every call; the label sets are few, so the children
        # counted on every request are looked up once and kept.
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

    def observe(self, route: str, cors: str, status: int, duration_ms: float, shadow_cors: str | None) -> None:
        """One request served; `shadow_cors`: the decision of the route's candidate CORS table, if any."""
        key = (route, cors, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(route, cors, str(status))
        counter.inc()
        histogram = self._duration_children.get(route)
        if histogram is None:
            histogram = self._duration_children[route] = self.duration.labels(route)
        histogram.observe(duration_ms / 1000)
        if shadow_cors is not None and shadow_cors != cors:
            self.shadow_diffs.labels(route, cors, shadow_cors).inc()

    def render(self) -> bytes:
        return generate_latest(self._registry)
