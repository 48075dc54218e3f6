"""`coxp learn`: the tightest CORS tables that allow exactly the cross-origin traffic observed.

Typical use: a legacy backend fronted in a permissive mode in staging, whose real callers nobody
knows. From the decision log of that traffic, each route that saw cross-origin requests gets a
CORS table listing exactly the origins seen (no wildcard, no regex), the non-safelisted methods
and the header names its preflights asked for, and credentials when a credentialed request came;
everything else in the file — comments, other tables, the CORS table's other keys (`mode`,
`max_age`, `enforce`, ...) — is kept as written (tomlkit edits the document in place).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import tomlkit
from tomlkit.items import AoT, InlineTable, Table

from proxy.model import Config
from proxy.origins import normalize_origin
from proxy.standards import NORMALISED_METHODS, SAFELISTED_METHODS, TOKEN_RE, is_forbidden_request_header

# The decision-log outcomes of a cross-origin request (same-origin and not-cors are not).
CROSS_ORIGIN = frozenset({"allowed", "denied", "preflight-allowed", "preflight-denied"})
PREFLIGHT = frozenset({"preflight-allowed", "preflight-denied"})
# Learned keys: replaced; the live table's other keys stay.
LEARNED_KEYS = ("allow_origins", "allow_origin_regex", "allow_methods", "allow_headers", "allow_credentials")


@dataclass
class Observed:
    """The cross-origin traffic of one route."""

    requests: Counter[str] = field(default_factory=Counter)  # origin -> actual requests
    preflights: Counter[str] = field(default_factory=Counter)  # origin -> preflights
    methods: set[str] = field(default_factory=set)
    headers: set[str] = field(default_factory=set)
    credentials: bool = False

    def origins(self) -> list[str]:
        """Most frequent first, then alphabetically: the order a reviewer reads them in."""
        total = self.requests + self.preflights
        return sorted(total, key=lambda origin: (-total[origin], origin))


def observe(events: Iterable[dict[str, Any]]) -> tuple[dict[str, Observed], list[str]]:
    """Per route, the cross-origin traffic in `events`; and notes on what cannot be listed."""
    routes: dict[str, Observed] = {}
    unlistable: Counter[str] = Counter()
    unnormalised: Counter[str] = Counter()
    for event in events:
        if event.get("event") != "request" or event.get("cors") not in CROSS_ORIGIN:
            continue
        route, origin = event.get("route"), event.get("origin")
        if not isinstance(route, str) or not isinstance(origin, str):
            continue
        normalized = normalize_origin(origin)
        if normalized is None:
            unlistable[origin] += 1
            continue
        seen = routes.setdefault(route, Observed())
        if event["cors"] in PREFLIGHT:
            seen.preflights[normalized] += 1
            method = event.get("preflight_method")
            # Fetch §4.9: safelisted methods never need listing; a value that is not one token
            # (`GET, PUT`) can never be allowed.
            if isinstance(method, str) and TOKEN_RE.fullmatch(method) and method not in SAFELISTED_METHODS:
                if method != method.upper() and method.upper() in NORMALISED_METHODS:
                    unnormalised[method] += 1  # the config upper-cases it; browsers do too
                else:
                    seen.methods.add(method)
            names = event.get("preflight_headers")
            if isinstance(names, list):
                # A forbidden name is one scripts cannot set: listing it would change nothing.
                seen.headers.update(n.lower() for n in names if isinstance(n, str) and TOKEN_RE.fullmatch(n)
                                    and not is_forbidden_request_header(n.lower()))
        else:
            seen.requests[normalized] += 1
            seen.credentials = seen.credentials or event.get("credentials") is True
    notes = [f"origin {origin!r} ({_count(count, 'request')}) is not a serialized origin and cannot be listed"
             for origin, count in unlistable.most_common()]
    notes += [f"method {method!r} ({_count(count, 'preflight')}) cannot be listed: the config upper-cases it, as "
              f"browsers do before they send it, so only {method.upper()!r} can be allowed (these callers are not "
              "browsers)" for method, count in unnormalised.most_common()]
    return routes, notes


HEADER = (
    "# CORS tables tightened by `coxp learn` to the cross-origin traffic of a decision log: the origins,\n"
    "# methods and request headers listed are exactly those observed (the comments count each origin's\n"
    "# requests and preflights). Review, then deploy.\n"
)


class LearnError(Exception):
    """The config file cannot be edited (its shape differs from what it compiled to)."""


def learn(text: str, config: Config, observed: dict[str, Observed]) -> tuple[str, list[str]]:
    """`text` (the TOML of `config`) with the CORS table of every route in `observed` tightened;
    also returns notes for the user (routes of the log that the config lacks, ...)."""
    doc = tomlkit.parse(text)
    notes: list[str] = []
    names = [route.name for route in config.routes]
    routes = doc.get("routes")
    if names and not isinstance(routes, AoT):
        raise LearnError("routes is not an array of tables ([[routes]]); write each route as [[routes]]")
    defaults = doc.get("defaults")
    defaults_cors = defaults.get("cors") if isinstance(defaults, (Table, InlineTable)) else None
    original_defaults_cors = defaults_cors.unwrap() if defaults_cors is not None else None

    for name in observed:
        if name != config.default_route.name and name not in names:
            notes.append(f'route "{name}" is in the log but not in the config; its traffic is ignored')

    tables = list(routes) if isinstance(routes, AoT) else []
    for i, name in enumerate(names):
        entry = tables[i]
        seen = observed.get(name)
        if "cors" in entry:
            if seen is not None:
                entry["cors"] = _tightened(entry["cors"], seen, f"routes[{i}].cors", notes)
        elif seen is not None and original_defaults_cors is not None:
            # Inherited from [defaults.cors]: the route gets a table of its own.
            entry["cors"] = _tightened(tomlkit.item(original_defaults_cors), seen, f"routes[{i}].cors", notes)
        elif original_defaults_cors is not None and config.default_route.name in observed:
            # [defaults.cors] is about to change; a route without traffic keeps the table it had.
            entry["cors"] = tomlkit.item(original_defaults_cors)

    seen_default = observed.get(config.default_route.name)
    if seen_default is not None and defaults_cors is not None and isinstance(defaults, (Table, InlineTable)):
        defaults["cors"] = _tightened(defaults_cors, seen_default, "defaults.cors", notes)
    return HEADER + tomlkit.dumps(doc), notes


def _tightened(live: Any, seen: Observed, key: str, notes: list[str]) -> Table:
    """A CORS table: `live`'s other keys (its shadow table too) where they were, the learned
    ones where `allow_origins` was."""
    origins = tomlkit.array()
    for origin in seen.origins():
        origins.add_line(origin, comment=_count_comment(seen.requests[origin], seen.preflights[origin]))
    origins.add_line(indent="")
    learned: dict[str, Any] = {"allow_origins": origins}
    if seen.methods:
        learned["allow_methods"] = sorted(seen.methods)
    if seen.headers:
        learned["allow_headers"] = sorted(seen.headers)
    if seen.credentials:
        if live.get("expose_headers") == ["*"]:
            # "*" in Access-Control-Expose-Headers means nothing with credentials (Fetch standard).
            notes.append(f'{key}: credentialed requests were seen, but expose_headers = ["*"] cannot be used with '
                         "allow_credentials = true; list the exposed header names, then set allow_credentials = true")
        else:
            learned["allow_credentials"] = True

    table = tomlkit.table()
    subtables = {}
    for name, value in live.items():
        if isinstance(value, (Table, dict)):
            subtables[name] = value  # the shadow table: after the plain keys, as TOML requires
        elif name not in LEARNED_KEYS:
            table[name] = value
        elif learned:
            for learned_name, learned_value in learned.items():
                table[learned_name] = learned_value
            learned = {}
    for name, value in [*learned.items(), *subtables.items()]:
        table[name] = value
    if not subtables:
        table.add(tomlkit.nl())
    return table


def _count_comment(requests: int, preflights: int) -> str:
    return ", ".join(_count(n, noun) for n, noun in ((requests, "request"), (preflights, "preflight")) if n)


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"
