"""`coxp report`: what a staging decision log says would break, and what to change.

`Summary` folds `request` and `report` events into counters (constant memory per distinct
origin, reason and resource, whatever the log's length); `summarize_log` turns them into one
plain-data result (`--json` prints it as is) whose `sections` the text and terminal renderers
share, so the three outputs cannot disagree.

Suggested changes name the config key to edit: with the config (`-c`) as a key path
(`routes[0].cors.allow_origins`), else by route (`route "api": cors.allow_origins`).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from proxy.model import Config, Route
from proxy.origins import normalize_origin
from proxy.policy import REASON_HEADER, REASON_METHOD, REASON_ORIGIN, REASON_PRIVATE_NETWORK
from proxy.routing import Router
from proxy.shadow import REASON_CREDENTIALS
from proxy.standards import SAFELISTED_METHODS

ALLOWED = frozenset({"allowed", "preflight-allowed"})
DENIED = frozenset({"denied", "preflight-denied"})
NO_ORIGIN = "(no Origin)"
MAX_DOCUMENTS = 3  # document URLs kept per report group, as examples


@dataclass
class RouteTraffic:
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_origin: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    # (origin, reason, detail): detail is the method or header names a denied preflight asked for
    denied: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    denied_methods: Counter[str] = field(default_factory=Counter)
    denied_headers: Counter[str] = field(default_factory=Counter)
    private_network: int = 0
    # (origin, live cors, candidate cors, candidate reason, what a denied preflight requested)
    shadow: Counter[tuple[str, str, str, str | None, str]] = field(default_factory=Counter)


@dataclass
class ReportGroup:
    count: int = 0
    dispositions: Counter[str] = field(default_factory=Counter)
    effective_policies: Counter[str] = field(default_factory=Counter)
    documents: list[str] = field(default_factory=list)


class Summary:
    """The counters of a decision log, fed one event at a time."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteTraffic] = defaultdict(RouteTraffic)
        self.reports: dict[tuple[str, str | None], ReportGroup] = defaultdict(ReportGroup)

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "request":
            self._request(event)
        elif kind == "report":
            self._report(event)

    def _request(self, event: dict[str, Any]) -> None:
        route, cors = event.get("route"), event.get("cors")
        if not isinstance(route, str) or not isinstance(cors, str):
            return
        origin = _text(event.get("origin")) or NO_ORIGIN
        traffic = self.routes[route]
        traffic.requests += 1
        traffic.outcomes[cors] += 1
        traffic.by_origin[origin][cors] += 1
        reason = _text(event.get("reason"))
        if cors in DENIED and reason:
            detail = _requested(event, reason)
            if reason == REASON_METHOD and detail:
                traffic.denied_methods[detail] += 1
            elif reason == REASON_HEADER:
                traffic.denied_headers.update(_names(event.get("preflight_headers")))
            elif reason == REASON_PRIVATE_NETWORK:
                traffic.private_network += 1
            traffic.denied[(origin, reason, detail)] += 1
        shadow = _text(event.get("shadow_cors"))
        if shadow and shadow != cors:
            shadow_reason = _text(event.get("shadow_reason"))
            detail = _requested(event, shadow_reason) if shadow in DENIED else ""
            traffic.shadow[(origin, cors, shadow, shadow_reason, detail)] += 1

    def _report(self, event: dict[str, Any]) -> None:
        kind = _text(event.get("type")) or "(no type)"
        group = self.reports[(kind, _text(event.get("blocked_url")))]
        group.count += 1
        group.dispositions[_text(event.get("disposition")) or "none"] += 1
        policy = _text(event.get("effective_policy"))
        if policy:
            group.effective_policies[policy] += 1
        url = _text(event.get("url"))
        if url and url not in group.documents and len(group.documents) < MAX_DOCUMENTS:
            group.documents.append(url)


def _requested(event: dict[str, Any], reason: str | None) -> str:
    """What a denied preflight asked for that the reason is about: its method or header names."""
    if reason == REASON_METHOD:
        return _text(event.get("preflight_method")) or ""
    if reason == REASON_HEADER:
        return ", ".join(_names(event.get("preflight_headers")))
    return ""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _names(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


# --------------------------------------------------------------------------------------------
# Config keys named by suggestions


class KeyNamer:
    """Names a route's config key: a key path with the config, else the route and the key."""

    def __init__(self, config: Config | None) -> None:
        self.config = config
        self.index = {route.name: i for i, route in enumerate(config.routes)} if config else {}

    def route(self, name: str) -> Route | None:
        if self.config is None:
            return None
        if name == self.config.default_route.name:
            return self.config.default_route
        i = self.index.get(name)
        return None if i is None else self.config.routes[i]

    def key(self, route: str, key: str) -> str:
        """`key` (e.g. `cors.allow_origins`) of `route`: the table the route's policy comes
        from — its own, else the `[defaults]` one it inherits."""
        if self.config is None or (route not in self.index and route != self.config.default_route.name):
            return f'route "{route}": {key}'
        if route == self.config.default_route.name:
            return f"defaults.{key}"
        i = self.index[route]
        table = key.split(".", 1)[0]
        written = self.config.effective.get("routes", [])
        own = i < len(written) and table in written[i]
        if not own and table in self.config.effective.get("defaults", {}):
            return f"defaults.{key}"
        return f"routes[{i}].{key}"

    def document_route(self, url: str | None) -> str | None:
        """The route serving a document URL (from a report), when the config is known."""
        if self.config is None or not url:
            return None
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        if not parts.hostname:
            return None
        return Router(self.config).match(parts.hostname, parts.path or "/", "GET").name


# --------------------------------------------------------------------------------------------
# The result


def summarize_log(summary: Summary, config: Config | None, lines: int, skipped: int) -> dict[str, Any]:
    """Everything `coxp report` shows, as plain data (what `--json` prints)."""
    namer = KeyNamer(config)
    routes = []
    for name in sorted(summary.routes, key=lambda n: -summary.routes[n].requests):
        traffic = summary.routes[name]
        routes.append({
            "route": name,
            "requests": traffic.requests,
            "cors": dict(traffic.outcomes.most_common()),
            "origins": [
                {"origin": origin, "requests": sum(counts.values()), "cors": dict(counts.most_common())}
                for origin, counts in sorted(traffic.by_origin.items(), key=lambda kv: -sum(kv[1].values()))
            ],
            "denied": [
                {"origin": origin, "reason": reason, "requested": detail or None, "count": count}
                for (origin, reason, detail), count in traffic.denied.most_common()
            ],
            "shadow_differences": [
                {"origin": origin, "live": live, "candidate": shadow, "candidate_reason": reason,
                 "requested": detail or None, "count": count}
                for (origin, live, shadow, reason, detail), count in traffic.shadow.most_common()
            ],
        })
    reports = [
        {
            "type": kind, "blocked_url": blocked, "count": group.count,
            "disposition": dict(group.dispositions.most_common()),
            "effective_policy": [p for p, _ in group.effective_policies.most_common()],
            "documents": group.documents,
        }
        for (kind, blocked), group in sorted(summary.reports.items(), key=lambda kv: -kv[1].count)
    ]
    return {
        "lines": lines,
        "skipped_lines": skipped,
        "routes": routes,
        "reports": reports,
        "suggestions": _suggestions(summary, namer),
    }


def _suggestions(summary: Summary, namer: KeyNamer) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def suggest(key: str, change: str, count: int, why: str) -> None:
        found.append({"key": key, "change": change, "count": count, "why": why})

    for name, traffic in summary.routes.items():
        origins: Counter[str] = Counter()
        for (origin, reason, _), count in traffic.denied.items():
            if reason == REASON_ORIGIN and (normalize_origin(origin) is not None):
                origins[origin] += count
        for origin, count in origins.most_common():
            suggest(namer.key(name, "cors.allow_origins"), f'add "{origin}"', count,
                    f"seen {_times(count)}, denied {REASON_ORIGIN}")
        for method, count in traffic.denied_methods.most_common():
            if method not in SAFELISTED_METHODS:
                suggest(namer.key(name, "cors.allow_methods"), f'add "{method}"', count,
                        f"requested in {_times(count, 'preflight')}, denied {REASON_METHOD}")
        route = namer.route(name)
        allowed_headers = route.policies.cors.allow_headers if route and route.policies.cors else frozenset()
        for header, count in traffic.denied_headers.most_common():
            if header not in allowed_headers:
                suggest(namer.key(name, "cors.allow_headers"), f'add "{header}"', count,
                        f"requested in {_times(count, 'denied preflight')} ({REASON_HEADER})")
        if traffic.private_network:
            suggest(namer.key(name, "cors.allow_private_network"), "set to true", traffic.private_network,
                    f"{_times(traffic.private_network, 'preflight')} from a public page asked for private network "
                    f"access, denied {REASON_PRIVATE_NETWORK}")
        _shadow_suggestions(name, traffic, namer, suggest)

    for (kind, blocked), group in summary.reports.items():
        document = group.documents[0] if group.documents else None
        page_route = namer.document_route(document)
        if kind == "coep" and blocked:
            key = namer.key(page_route, "coep.policy") if page_route else "coep.policy (of the page's route)"
            suggest(key, 'set to "credentialless", or serve the resource with CORP cross-origin', group.count,
                    f"the resource {blocked} was blocked by COEP {_times(group.count)}: serve it with "
                    "`Cross-Origin-Resource-Policy: cross-origin` or use `credentialless`")
        elif kind == "coop":
            key = namer.key(page_route, "coop.policy") if page_route else "coop.policy (of the page's route)"
            policy = ", ".join(group.effective_policies) or "its policy"
            where = f" on {document}" if document else ""
            suggest(key, 'consider "same-origin-allow-popups"', group.count,
                    f"{_times(group.count, 'COOP report')}{where} under {policy}: a cross-origin window this page "
                    "opens, or that opened it, loses its reference; if that popup flow must keep working, "
                    "same-origin-allow-popups keeps it")
    found.sort(key=lambda s: -s["count"])
    return found


Suggest = Callable[[str, str, int, str], None]


def _shadow_suggestions(name: str, traffic: RouteTraffic, namer: KeyNamer, suggest: Suggest) -> None:
    """A candidate that would deny what the live table allows is what breaks on enforcement."""
    breaks: Counter[tuple[str, str, str]] = Counter()
    for (origin, live, shadow, reason, detail), count in traffic.shadow.items():
        if live in ALLOWED and shadow in DENIED:
            breaks[(origin, reason or "", detail)] += count
    for (origin, reason, detail), count in breaks.most_common():
        if reason == REASON_METHOD:
            key, change = "allow_methods", f'add "{detail}"'
        elif reason == REASON_HEADER:
            key, change = "allow_headers", "add " + ", ".join(f'"{h}"' for h in detail.split(", "))
        elif reason == REASON_PRIVATE_NETWORK:
            key, change = "allow_private_network", "set to true"
        elif reason == REASON_CREDENTIALS:
            key, change = "allow_credentials", "set to true"
        else:
            key, change = "allow_origins", f'add "{origin}"'
        suggest(namer.key(name, f"cors.shadow.{key}"), f"{change}, or accept that it breaks", count,
                f"{_times(count, 'request')} from {origin} allowed now would be denied by the candidate ({reason})")


def _times(count: int, noun: str = "time") -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# --------------------------------------------------------------------------------------------
# Rendering: one list of sections, printed as plain text or as rich tables


@dataclass
class Section:
    title: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    empty: str


def sections(result: dict[str, Any]) -> list[Section]:
    origins, denied, shadow = [], [], []
    for route in result["routes"]:
        name = route["route"]
        for entry in route["origins"]:
            origins.append((name, entry["origin"], str(entry["requests"]), _counts(entry["cors"])))
        for entry in route["denied"]:
            denied.append((name, entry["origin"], entry["reason"], entry["requested"] or "", str(entry["count"])))
        for entry in route["shadow_differences"]:
            change = f"{entry['live']} → {entry['candidate']}"
            why = " ".join(filter(None, (entry["candidate_reason"], entry["requested"] and f"({entry['requested']})")))
            shadow.append((name, entry["origin"], change, why, str(entry["count"])))
    reports = [
        (r["type"], r["blocked_url"] or "", str(r["count"]), _counts(r["disposition"]), ", ".join(r["documents"]))
        for r in result["reports"]
    ]
    suggestions = [(s["key"], s["change"], str(s["count"]), s["why"]) for s in result["suggestions"]]
    return [
        Section("CORS outcomes by origin", ("route", "origin", "requests", "outcomes"), origins,
                "no request events in the log"),
        Section("Denied origins", ("route", "origin", "reason", "requested", "count"), denied, "nothing denied"),
        Section("Shadow differences (live → candidate)", ("route", "origin", "change", "candidate reason", "count"),
                shadow, "no differences (or no [routes.cors.shadow] table)"),
        Section("Reports", ("type", "blocked resource", "count", "disposition", "documents"), reports,
                "no reports"),
        Section("Suggested changes", ("key", "change", "count", "why"), suggestions, "nothing to change"),
    ]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def render_text(result: dict[str, Any]) -> str:
    out = [f"{result['lines']} log lines read" + (f", {result['skipped_lines']} skipped (not JSON)"
                                                  if result["skipped_lines"] else "")]
    for section in sections(result):
        out += ["", section.title, "=" * len(section.title)]
        if not section.rows:
            out.append(f"({section.empty})")
            continue
        widths = [max(len(row[i]) for row in [section.columns, *section.rows]) for i in range(len(section.columns))]
        for row in [section.columns, *section.rows]:
            # The last column is free text: never padded, so lines carry no trailing spaces.
            cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
            out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def render_rich(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(f"[bold]{result['lines']}[/bold] log lines read"
                  + (f", {result['skipped_lines']} skipped (not JSON)" if result["skipped_lines"] else ""))
    for section in sections(result):
        if not section.rows:
            console.print(f"\n[bold]{section.title}[/bold]: [dim]{section.empty}[/dim]")
            continue
        table = Table(title=section.title, title_justify="left", title_style="bold", expand=False)
        for i, column in enumerate(section.columns):
            table.add_column(column, justify="right" if column in ("requests", "count") else "left",
                             overflow="fold", no_wrap=i == 0)
        for row in section.rows:
            # Text, not markup: `routes[0]` or `[::1]` in a cell are data, not style tags.
            table.add_row(*(Text(cell) for cell in row))
        console.print()
        console.print(table)


def summarize_events(events: Iterable[dict[str, Any]]) -> Summary:
    summary = Summary()
    for event in events:
        summary.add(event)
    return summary
