"""Reading the TOML file and the plumbing every config check shares.

Validation never stops at the first mistake: every check appends to one `Report`, and a single
`ConfigError` lists all problems, each under its TOML key path (`routes[1].cors.max_age`; array
indexes count from 0). A `Table` is one TOML table under validation: its typed reads report a
wrong type or an out-of-range value under the key's path and record the value they read for the
admin `/config` view. Tables and keys whose name starts with `x-` are the user's own
(annotations for other tools) and are ignored at any level.
"""
from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from proxy.errors import ConfigError, ConfigProblem

T = TypeVar("T")
_INVALID = object()  # a read whose problem has been reported

# A TOML bare key, with array indexes: how a key path part is written unquoted.
KEY_PATH_PART = re.compile(r"[A-Za-z0-9_-]+(?:\[[0-9]+\])*")


# ---------------------------------------------------------------------------------------------
# Reading TOML


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigProblem("", f"invalid TOML: {_with_position(str(exc), text)}")]) from None
    except RecursionError:
        raise ConfigError(source, [ConfigProblem("", "invalid TOML: arrays or tables nested too deeply")]) from None


def _with_position(message: str, text: str) -> str:
    """tomllib says "(at line L, column C)", except at the very end: give line and column there too."""
    if "(at end of document)" not in message:
        return message
    line = text.count("\n") + 1
    column = len(text) - (text.rfind("\n") + 1) + 1
    return message.replace("(at end of document)", f"(at end of document, line {line}, column {column})")


def merged(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` on top of `base`: tables merge key by key, anything else replaces.

    `None` values are skipped (TOML has no null, so None can only mean "not given", e.g. an
    absent command-line flag)."""
    result = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


# ---------------------------------------------------------------------------------------------
# Problem collection and typed reads


class Invalid(Exception):
    """A value parser's verdict; its message becomes the problem's message."""


_ROUTE_KEY = re.compile(r"routes\[(\d+)\]")


class Report:
    def __init__(self) -> None:
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def name_routes(self, routes: Any) -> None:
        """Add the route's name to every problem under `routes[i]`, which a reader finds in the
        file faster than an index: `routes[1].cors.max_age: ...; in route "api"`. The key path
        itself stays exact, and so does the start of the message."""
        names = [r.get("name") if isinstance(r, dict) else None for r in routes] if isinstance(routes, list) else []
        for problems in (self.errors, self.warnings):
            for i, problem in enumerate(problems):
                found = _ROUTE_KEY.match(problem.key)
                name = names[int(found[1])] if found is not None and int(found[1]) < len(names) else None
                if found is None or not isinstance(name, str):
                    continue
                if problem.key == f"{found[0]}.name":  # a problem with the name itself quotes it already
                    continue
                problems[i] = ConfigProblem(problem.key, f"{problem.message}; in route {quoted(name)}")


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}


def describe(value: Any) -> str:
    name = _TYPE_NAMES.get(type(value), "a date/time" if hasattr(value, "isoformat") else type(value).__name__)
    if isinstance(value, (bool, int, float, str)):
        return f"{name} ({toml_value(value)})"
    return name


def toml_value(value: Any) -> str:
    """A value as it would be written in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _close_keys(key: str, known: tuple[str, ...]) -> list[str]:
    """The known key a mistyped one most likely meant: the same key in other case or with `-`
    for `_` (`[routes.CORS]`, `Allow-Origins`), else the closest spelling."""
    folded = key.lower().replace("-", "_")
    same = [name for name in known if name.lower() == folded]
    return same or difflib.get_close_matches(folded, known, n=1)


def quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def join_key(path: str, key: str) -> str:
    if not KEY_PATH_PART.fullmatch(key):
        key = quoted(key)
    return f"{path}.{key}" if path else key


def is_extension(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("x-")


class Table:
    """One TOML table under validation: typed reads that report problems under its key path.

    `effective` records every value read (defaults included), for the admin `/config` view."""

    def __init__(self, report: Report, path: str, data: Mapping[str, Any], known: tuple[str, ...] | None):
        self.report = report
        self.path = path
        self.data = data
        self.effective: dict[str, Any] = {}
        if known is not None:  # None: the keys are the user's own names (reporting endpoints)
            self._reject_unknown_keys(known)

    def _reject_unknown_keys(self, known: tuple[str, ...]) -> None:
        for key in self.data:
            if is_extension(key) or key in known:
                continue
            close = _close_keys(str(key), known)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            self.error(str(key), f"unknown key; {hint}expected one of: {', '.join(known)} (or an x- table of your own)")

    def key(self, name: str) -> str:
        return join_key(self.path, name)

    def error(self, name: str, message: str) -> None:
        self.report.errors.append(ConfigProblem(self.key(name), message))

    def warn(self, name: str, message: str) -> None:
        self.report.warnings.append(ConfigProblem(self.key(name), message))

    def _value(self, name: str, accepts: Callable[[object], bool], expected: str, default: object,
               missing: str | None) -> object:
        """The value of `name`, `default` when absent; `_INVALID` (reported) when missing or of
        the wrong type."""
        if name not in self.data:
            if missing is not None:
                self.error(name, f"missing; {missing}")
                return _INVALID
            self.effective[name] = default
            return default
        value = self.data[name]
        if not accepts(value):
            self.error(name, f"expected {expected}, got {describe(value)}")
            return _INVALID
        self.effective[name] = value
        return value

    # Every typed read returns the value, or its default when the key is absent or its value
    # has a problem (which is reported): a config with problems is never built, so a default
    # standing in for a wrong value cannot reach the request path, and the compiled objects
    # never hold None where the model says a value is.

    @overload
    def string(self, name: str, default: str, missing: str | None = None) -> str: ...
    @overload
    def string(self, name: str, default: None = None, missing: str | None = None) -> str | None: ...
    def string(self, name: str, default: str | None = None, missing: str | None = None) -> str | None:
        value = self._value(name, lambda v: isinstance(v, str), "a string", default, missing)
        return value if isinstance(value, str) else default

    def boolean(self, name: str, default: bool) -> bool:
        value = self._value(name, lambda v: isinstance(v, bool), "a boolean (true or false)", default, None)
        return value if isinstance(value, bool) else default

    @overload
    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int: ...
    @overload
    def integer(self, name: str, default: None, minimum: int, maximum: int | None = None) -> int | None: ...
    def integer(self, name: str, default: int | None, minimum: int, maximum: int | None = None) -> int | None:
        value = self._value(name, is_int, "an integer", default, None)
        if not isinstance(value, int):
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            self.error(name, f"{value} is out of range; write an integer {bounds}")
            return default
        return value

    def seconds(self, name: str, default: float) -> float:
        value = self._value(name, is_number, "a number of seconds", default, None)
        if not isinstance(value, (int, float)):
            return default
        if not math.isfinite(value) or value <= 0:
            self.error(name, f"{value} is not a positive number of seconds; write e.g. {default}")
            return default
        return float(value)

    @overload
    def choice(self, name: str, choices: tuple[str, ...], default: str, missing: str | None = None,
               fold_case: bool = False) -> str: ...
    @overload
    def choice(self, name: str, choices: tuple[str, ...], default: None, missing: str | None = None,
               fold_case: bool = False) -> str | None: ...
    def choice(self, name: str, choices: tuple[str, ...], default: str | None, missing: str | None = None,
               fold_case: bool = False) -> str | None:
        value = self.string(name, default, missing)
        if value is None:
            return None
        if fold_case:
            value = value.lower()
            self.effective[name] = value
        if value not in choices:
            self.error(name, f"{quoted(value)} is not one of: {', '.join(choices)}")
            return default
        return value

    def strings(self, name: str) -> list[str] | None:
        """An array of strings (default empty); None when it or any element has the wrong type."""
        value = self._value(name, lambda v: isinstance(v, list), "an array of strings", [], None)
        if not isinstance(value, list):
            return None
        wrong = [(i, item) for i, item in enumerate(value) if not isinstance(item, str)]
        for i, item in wrong:
            self.error(f"{name}[{i}]", f"expected a string, got {describe(item)}")
        self.effective[name] = list(value)
        return None if wrong else list(value)

    @overload
    def parsed(self, name: str, parse: Callable[[str], T], default: str, missing: str | None = None) -> T: ...
    @overload
    def parsed(self, name: str, parse: Callable[[str], T], default: None = None,
               missing: str | None = None) -> T | None: ...
    def parsed(self, name: str, parse: Callable[[str], T], default: str | None = None,
               missing: str | None = None) -> T | None:
        """A string turned into a value by `parse`, whose `Invalid` becomes this key's problem;
        with a `default` (a valid text), the default's value when absent or invalid."""
        text = self.string(name, default, missing)
        if text is None:
            return None
        value = self.parse_at(name, parse, text)
        if value is None and default is not None:
            return parse(default)
        return value

    def parse_at(self, key: str, parse: Callable[[str], T], text: str) -> T | None:
        try:
            return parse(text)
        except Invalid as exc:
            self.error(key, str(exc))
            return None

    def subtable(self, name: str, known: tuple[str, ...] | None) -> Table | None:
        """The sub-table `name`, or None when it is absent or not a table (reported)."""
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, dict):
            self.error(name, f"expected a table ([{self.key(name)}]), got {describe(value)}")
            return None
        table = Table(self.report, self.key(name), value, known)
        self.effective[name] = table.effective
        return table


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
