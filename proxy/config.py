"""Load, validate and compile the TOML configuration (CONTRACT §3) into `proxy.model` objects.

Validation never stops at the first mistake: every check appends to one report, and a single
`ConfigError` lists all problems, each under its TOML key path (`routes[1].cors.max_age`; array
indexes count from 0). Checks normalise as they go and precompute header values, so the request
path never looks at raw configuration. Tables and keys whose name starts with `x-` are the user's
own (annotations for other tools) and are ignored at any level.

Relative file paths (`tls_cert`, `tls_key`, `upstream_ca`) are resolved against the directory of
the config file, so a config works whatever the current directory is.
"""
from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import ssl
from typing import Any, Callable, Iterable, Mapping, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

from proxy.errors import ConfigError, ConfigProblem
from proxy.model import (
    AdminSettings,
    Config,
    CorsPolicy,
    Endpoint,
    HeaderPolicy,
    IPNetwork,
    Limits,
    LogSettings,
    Policies,
    ProxySettings,
    Route,
    Upstream,
)
from proxy.origins import compile_origins, credential_warnings
from proxy.policy import compile_policies
from proxy.routing import compile_host_patterns, compile_path_globs

T = TypeVar("T")

MODES = ("set", "default", "remove", "pass")
SETTING_MODES = ("set", "default")  # the modes in which a table's own headers are written
POLICY_TABLES = ("cors", "corp", "coop", "coep", "reporting")

TOP_KEYS = ("proxy", "admin", "log", "limits", "defaults", "routes")
PROXY_KEYS = (
    "listen", "upstream", "workers", "preserve_host", "forwarded_headers", "trusted_proxies",
    "connect_timeout", "read_timeout", "tls_cert", "tls_key", "upstream_ca", "upstream_verify",
)
ADMIN_KEYS = ("listen",)
LOG_KEYS = ("level", "format")
LIMIT_KEYS = (
    "header_timeout", "keepalive_timeout", "max_request_line", "max_header_bytes", "max_headers",
    "max_in_flight", "max_body_bytes",
)
ROUTE_KEYS = ("name", "hosts", "paths", "methods", "upstream", *POLICY_TABLES)
CORS_KEYS = (
    "mode", "allow_origins", "allow_origin_regex", "allow_methods", "allow_headers",
    "expose_headers", "allow_credentials", "max_age", "allow_private_network", "preflight", "enforce",
)
CORP_KEYS = ("mode", "policy")
COOP_COEP_KEYS = ("mode", "policy", "report_to", "report_only")
REPORTING_KEYS = ("mode", "endpoints")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "console")
CORP_POLICIES = ("same-origin", "same-site", "cross-origin")
COOP_POLICIES = ("unsafe-none", "same-origin-allow-popups", "same-origin", "noopener-allow-popups")
COEP_POLICIES = ("unsafe-none", "require-corp", "credentialless")

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_AGE_LIMIT = 86400  # a day; Firefox's cap, the highest of the browsers' caps

# RFC 9110 §5.6.2: token = 1*tchar. Methods (§9.1) and field names (§5.1) are tokens.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 8941 §3.1.2: a Structured Field dictionary key, the grammar of Reporting-Endpoints names.
SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
# A TOML bare key, with array indexes: how a key path part is written unquoted.
KEY_PATH_PART = re.compile(r"[A-Za-z0-9_-]+(?:\[[0-9]+\])*")
HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOSTNAME = re.compile(rf"{HOST_LABEL}(?:\.{HOST_LABEL})*\.?")
ENDPOINT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})")
AUTHORITY = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*))(?::(?P<port>[0-9]{1,5}))?")
URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.DOTALL)

# Fetch standard: browsers normalise these six method names to upper case (`normalize` a method),
# so `patch` stays `patch` but `delete` is sent as `DELETE`.
NORMALISED_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"})
# Fetch standard "forbidden method": scripts can never send these.
FORBIDDEN_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
# Fetch standard "forbidden response-header name": never exposed to scripts, whatever the server says.
FORBIDDEN_RESPONSE_HEADERS = frozenset({"set-cookie", "set-cookie2"})
# Fetch standard "forbidden request-header name" (plus Private Network Access's): scripts cannot
# set them, so allowing them in a preflight has no effect.
FORBIDDEN_REQUEST_HEADERS = frozenset({
    "accept-charset", "accept-encoding", "access-control-request-headers",
    "access-control-request-method", "access-control-request-private-network", "connection",
    "content-length", "cookie", "cookie2", "date", "dnt", "expect", "host", "keep-alive", "origin",
    "referer", "set-cookie", "te", "trailer", "transfer-encoding", "upgrade", "via",
})
FORBIDDEN_REQUEST_PREFIXES = ("proxy-", "sec-")
# Response-only CORS headers: listing them as request headers is a misunderstanding of CORS
# (jub0bs/cors refuses them).
RESPONSE_ONLY_CORS_HEADERS = frozenset({
    "access-control-allow-origin", "access-control-allow-credentials", "access-control-allow-methods",
    "access-control-allow-headers", "access-control-allow-private-network", "access-control-max-age",
    "access-control-expose-headers",
})
# Request-side and preflight-only names: exposing them on a response is meaningless (jub0bs/cors).
UNEXPOSABLE_HEADERS = frozenset({
    "origin", "access-control-request-method", "access-control-request-headers",
    "access-control-request-private-network", "access-control-allow-methods",
    "access-control-allow-headers", "access-control-max-age", "access-control-allow-private-network",
})


# ---------------------------------------------------------------------------------------------
# Public functions


def load_config(path: str, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read, validate and compile the config file `path` (named as given in every message)."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise ConfigError(path, [ConfigProblem("", "no such file; give the path of a TOML config with -c")]) from None
    except OSError as exc:
        raise ConfigError(path, [ConfigProblem("", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [ConfigProblem("", f"not UTF-8 (byte {exc.start}); TOML files are UTF-8")]) from None
    return _load(text, path, os.path.dirname(os.path.abspath(path)), overrides)


def load_config_text(text: str, source: str = "<string>", overrides: Mapping[str, Any] | None = None) -> Config:
    """Like `load_config`, from a string; relative file paths are resolved against the current directory."""
    return _load(text, source, os.getcwd(), overrides)


def summarize(config: Config) -> list[str]:
    """The `coxp check` lines: one per route in file order, then one for `default`."""
    routes = [*config.routes, config.default_route]
    tables = [*config.effective["routes"], config.effective["defaults"]]  # the tables as written
    width = max(len(route.name) for route in routes)
    return [
        f"{route.name.ljust(width)}  {_route_summary(route, config, effective)}"
        for route, effective in zip(routes, tables)
    ]


# ---------------------------------------------------------------------------------------------
# Reading TOML


def _load(text: str, source: str, base_dir: str, overrides: Mapping[str, Any] | None) -> Config:
    data = _parse_toml(text, source)
    if overrides:
        data = _merged(data, overrides)
    report = _Report()
    config = _compile(report, data, source, base_dir)
    if report.errors:
        raise ConfigError(source, report.errors)
    for route in (*config.routes, config.default_route):
        compile_policies(route.policies)  # precompute now, not on a route's first request
    return config


def _parse_toml(text: str, source: str) -> dict[str, Any]:
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


def _merged(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` on top of `base`: tables merge key by key, anything else replaces.

    `None` values are skipped (TOML has no null, so None can only mean "not given", e.g. an
    absent command-line flag)."""
    result = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = _merged(result[key], value)
        else:
            result[key] = value
    return result


# ---------------------------------------------------------------------------------------------
# Problem collection and typed reads


class _Invalid(Exception):
    """A value parser's verdict; its message becomes the problem's message."""


class _Report:
    def __init__(self) -> None:
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}


def _describe(value: Any) -> str:
    name = _TYPE_NAMES.get(type(value), "a date/time" if hasattr(value, "isoformat") else type(value).__name__)
    if isinstance(value, (bool, int, float, str)):
        return f"{name} ({_toml(value)})"
    return name


def _toml(value: Any) -> str:
    """A value as it would be written in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _join(path: str, key: str) -> str:
    if not KEY_PATH_PART.fullmatch(key):
        key = _quoted(key)
    return f"{path}.{key}" if path else key


def _is_extension(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("x-")


class _Table:
    """One TOML table under validation: typed reads that report problems under its key path.

    `effective` records every value read (defaults included), for the admin `/config` view."""

    def __init__(self, report: _Report, path: str, data: Mapping[str, Any], known: tuple[str, ...] | None):
        self.report = report
        self.path = path
        self.data = data
        self.effective: dict[str, Any] = {}
        if known is not None:  # None: the keys are the user's own names (reporting endpoints)
            self._reject_unknown_keys(known)

    def _reject_unknown_keys(self, known: tuple[str, ...]) -> None:
        for key in self.data:
            if _is_extension(key) or key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            self.error(str(key), f"unknown key; {hint}expected one of: {', '.join(known)} (or an x- table of your own)")

    def key(self, name: str) -> str:
        return _join(self.path, name)

    def error(self, name: str, message: str) -> None:
        self.report.errors.append(ConfigProblem(self.key(name), message))

    def warn(self, name: str, message: str) -> None:
        self.report.warnings.append(ConfigProblem(self.key(name), message))

    def _read(self, name: str, accepts: Callable[[Any], bool], expected: str, default: Any, missing: str | None) -> Any:
        """The value of `name`, `default` when absent; None (reported) when missing or of the wrong type."""
        if name not in self.data:
            if missing is not None:
                self.error(name, f"missing; {missing}")
                return None
            self.effective[name] = default
            return default
        value = self.data[name]
        if not accepts(value):
            self.error(name, f"expected {expected}, got {_describe(value)}")
            return None
        self.effective[name] = value
        return value

    def string(self, name: str, default: str | None = None, missing: str | None = None) -> str | None:
        return self._read(name, lambda v: isinstance(v, str), "a string", default, missing)

    def boolean(self, name: str, default: bool) -> bool | None:
        return self._read(name, lambda v: isinstance(v, bool), "a boolean (true or false)", default, None)

    def integer(self, name: str, default: int | None, minimum: int, maximum: int | None = None) -> int | None:
        value = self._read(name, _is_int, "an integer", default, None)
        if value is None:
            return None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            self.error(name, f"{value} is out of range; write an integer {bounds}")
            return None
        return value

    def seconds(self, name: str, default: float) -> float | None:
        value = self._read(name, _is_number, "a number of seconds", default, None)
        if value is None:
            return None
        if not math.isfinite(value) or value <= 0:
            self.error(name, f"{value} is not a positive number of seconds; write e.g. {default}")
            return None
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...], default: str | None, missing: str | None = None,
               fold_case: bool = False) -> str | None:
        value = self.string(name, default, missing)
        if value is None:
            return None
        if fold_case:
            value = value.lower()
            self.effective[name] = value
        if value not in choices:
            self.error(name, f"{_quoted(value)} is not one of: {', '.join(choices)}")
            return None
        return value

    def strings(self, name: str) -> list[str] | None:
        """An array of strings (default empty); None when it or any element has the wrong type."""
        value = self._read(name, lambda v: isinstance(v, list), "an array of strings", [], None)
        if value is None:
            return None
        wrong = [(i, item) for i, item in enumerate(value) if not isinstance(item, str)]
        for i, item in wrong:
            self.error(f"{name}[{i}]", f"expected a string, got {_describe(item)}")
        self.effective[name] = list(value)
        return None if wrong else list(value)

    def parsed(self, name: str, parse: Callable[[str], T], default: str | None = None,
               missing: str | None = None) -> T | None:
        """A string turned into a value by `parse`, whose `_Invalid` becomes this key's problem."""
        text = self.string(name, default, missing)
        return None if text is None else self.parse_at(name, parse, text)

    def parse_at(self, key: str, parse: Callable[[str], T], text: str) -> T | None:
        try:
            return parse(text)
        except _Invalid as exc:
            self.error(key, str(exc))
            return None

    def subtable(self, name: str, known: tuple[str, ...] | None) -> _Table | None:
        """The sub-table `name`, or None when it is absent or not a table (reported)."""
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, dict):
            self.error(name, f"expected a table ([{self.key(name)}]), got {_describe(value)}")
            return None
        table = _Table(self.report, self.key(name), value, known)
        self.effective[name] = table.effective
        return table


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# Value parsers (each raises `_Invalid` with what to write instead)


def _parse_endpoint(text: str) -> Endpoint:
    """`HOST:PORT` or `[IPv6]:PORT`; port 0 asks the system for a free port."""
    match = ENDPOINT.fullmatch(text)
    if match is None:
        raise _Invalid(f'{_quoted(text)} is not HOST:PORT; write e.g. "127.0.0.1:8080" or "[::1]:8080"')
    port = int(match["port"])
    if port > 65535:
        raise _Invalid(f"port {port} is out of range; write a port between 0 and 65535")
    if match["v6"] is not None:
        return Endpoint(_ipv6(match["v6"], text), port)
    host = match["host"].lower()
    if not HOSTNAME.fullmatch(host):
        raise _Invalid(f'{_quoted(text)} has no valid host; write e.g. "127.0.0.1:{port}" or "0.0.0.0:{port}"')
    return Endpoint(host, port)


def _ipv6(text: str, whole: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise _Invalid(f"{_quoted(whole)}: {_quoted(text)} is not an IPv6 address; write e.g. [::1]") from None


def _parse_upstream(text: str) -> Upstream:
    """`scheme://host[:port]`: http or https, no userinfo, path, query or fragment."""
    match = URL.fullmatch(text)
    if match is None:
        raise _Invalid(f'{_quoted(text)} is not a URL; write scheme://host[:port], e.g. "http://127.0.0.1:3000"')
    scheme = match["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        raise _Invalid(f'{_quoted(text)} has scheme "{scheme}"; an upstream is http:// or https://')
    _reject_url_rest(text, match["rest"])
    authority = match["authority"]
    if "@" in authority:
        raise _Invalid(f"{_quoted(text)} has userinfo; remove the part before @ (credentials do not belong in the config URL)")
    parts = AUTHORITY.fullmatch(authority)
    if parts is None:
        raise _Invalid(f'{_quoted(text)} has an invalid host or port; write scheme://host[:port], e.g. "http://127.0.0.1:3000"')
    port = DEFAULT_PORTS[scheme] if parts["port"] is None else int(parts["port"])
    if not 1 <= port <= 65535:
        raise _Invalid(f"{_quoted(text)}: port {port} is out of range; write a port between 1 and 65535")
    if parts["v6"] is not None:
        host = _ipv6(parts["v6"], text)
        named = f"[{host}]"
    else:
        host = parts["host"].lower()
        if not HOSTNAME.fullmatch(host):
            raise _Invalid(f'{_quoted(text)} has no valid host; write e.g. "http://127.0.0.1:3000" (non-ASCII names in punycode)')
        named = host
    port_suffix = "" if port == DEFAULT_PORTS[scheme] else f":{port}"
    return Upstream(f"{scheme}://{named}{port_suffix}", scheme, host, port, f"{named}{port_suffix}")


def _reject_url_rest(text: str, rest: str) -> None:
    # A lone "/" is the empty path of RFC 3986 and harmless; anything else would be silently
    # ignored, since request paths reach the upstream exactly as the client sent them.
    if rest in ("", "/"):
        return
    what = {"?": "a query", "#": "a fragment"}.get(rest[0], f"a path ({rest})")
    raise _Invalid(f"{_quoted(text)} has {what}; an upstream is scheme://host[:port] — requests keep their own path and query")


def _parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR network; a bare address is a one-address network."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Invalid(f'{_quoted(text)} is not an IP address or CIDR network; write e.g. "10.0.0.0/8" or "192.0.2.7"') from None
    raise _Invalid(f'{_quoted(text)} has host bits set; write "{loose}"')


def _parse_host_pattern(text: str) -> str:
    """A `hosts` entry: an exact host name or IP address, or `*.domain`; returned lower-cased."""
    host = text.lower()
    if host == "*":
        raise _Invalid('"*" alone is not a host pattern; omit hosts to match every host')
    if host.startswith("[") and host.endswith("]"):
        return _ipv6(host[1:-1], text)
    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        pass
    name = host[2:] if host.startswith("*.") else host
    if "*" in name:
        raise _Invalid(f'{_quoted(text)}: only a leading "*." is supported, e.g. "*.example.test"')
    if ":" in name:
        raise _Invalid(f"{_quoted(text)} has a port; hosts match the Host header without its port, write {_quoted(host.rsplit(':', 1)[0])}")
    if not HOSTNAME.fullmatch(name):
        raise _Invalid(f'{_quoted(text)} is not a host name; write e.g. "api.example.test" or "*.example.test" (non-ASCII names in punycode)')
    return host


def _parse_path_glob(text: str) -> str:
    """A `paths` entry: starts with "/", printable ASCII as it appears in a request target."""
    if not text.startswith("/"):
        raise _Invalid(f'{_quoted(text)} does not start with "/"; write e.g. "/api/*" ("/*" matches every path)')
    if "?" in text or "#" in text:
        raise _Invalid(f"{_quoted(text)} has a query or fragment; paths are matched without the query, remove it")
    if any(not "!" <= char <= "~" for char in text):
        # Request targets are ASCII without spaces (RFC 9112 §3.2); paths are never decoded.
        raise _Invalid(f"{_quoted(text)} has a space, control or non-ASCII character; write it percent-encoded, as browsers send it")
    return text


def _parse_method(text: str) -> str:
    """A method token (RFC 9110 §9.1), the six Fetch-normalised names upper-cased."""
    if not TOKEN.fullmatch(text):
        raise _Invalid(f'{_quoted(text)} is not a method (an HTTP token, RFC 9110 §9.1); write e.g. "PATCH"')
    upper = text.upper()
    return upper if upper in NORMALISED_METHODS else text


def _parse_sf_key(text: str) -> str:
    if not SF_KEY.fullmatch(text):
        raise _Invalid(f'{_quoted(text)} is not an endpoint name (lower-case letters, digits, "_", "-", ".", "*", starting with a letter; RFC 8941 §3.1.2); write e.g. "default"')
    return text


def _parse_report_url(text: str) -> str:
    match = URL.fullmatch(text)
    if match is None or match["scheme"].lower() not in DEFAULT_PORTS or not match["authority"]:
        raise _Invalid(f'{_quoted(text)} is not an absolute http(s) URL; write e.g. "https://reports.example.test/r"')
    if any(not "!" <= char <= "~" for char in text) or '"' in text or "\\" in text:
        # The URL is written inside a Structured Field string (RFC 8941 §3.3.3).
        raise _Invalid(f'{_quoted(text)} has a space, quote, backslash or non-ASCII character; percent-encode it')
    return text


# ---------------------------------------------------------------------------------------------
# Compiling the whole file


def _compile(report: _Report, data: dict[str, Any], source: str, base_dir: str) -> Config:
    root = _Table(report, "", data, TOP_KEYS)
    proxy_table = root.subtable("proxy", PROXY_KEYS) or _Table(report, "proxy", {}, PROXY_KEYS)
    proxy = _proxy_settings(proxy_table, base_dir)
    admin_table = root.subtable("admin", ADMIN_KEYS)
    admin = _admin_settings(admin_table) if admin_table is not None else None
    if admin is not None:
        _reject_shared_listen(admin_table, admin.listen, proxy.listen)
    log_table = root.subtable("log", LOG_KEYS) or _Table(report, "log", {}, LOG_KEYS)
    log = _log_settings(log_table)
    limits_table = root.subtable("limits", LIMIT_KEYS) or _Table(report, "limits", {}, LIMIT_KEYS)
    limits = _limits(limits_table)
    defaults_table = root.subtable("defaults", POLICY_TABLES) or _Table(report, "defaults", {}, POLICY_TABLES)
    defaults = _policies(defaults_table, Policies(), {})
    routes, route_effective = _routes(root, defaults, defaults_table.effective)
    _require_upstream(proxy_table, routes)
    default_route = Route(name="default", policies=defaults, upstream=proxy.upstream)
    effective = {
        "proxy": proxy_table.effective,
        "admin": admin_table.effective if admin_table is not None else None,
        "log": log_table.effective,
        "limits": limits_table.effective,
        "defaults": defaults_table.effective,
        "routes": route_effective,
    }
    return Config(
        source=source, proxy=proxy, admin=admin, log=log, limits=limits, routes=tuple(routes),
        default_route=default_route, warnings=tuple(w.render(source) for w in report.warnings),
        effective=effective,
    )


def _proxy_settings(table: _Table, base_dir: str) -> ProxySettings:
    tls_cert, tls_key = _tls_files(table, base_dir)
    return ProxySettings(
        listen=table.parsed("listen", _parse_endpoint, "127.0.0.1:8080"),
        upstream=table.parsed("upstream", _parse_upstream),
        workers=table.integer("workers", 1, minimum=1),
        preserve_host=table.boolean("preserve_host", False),
        forwarded_headers=table.boolean("forwarded_headers", True),
        trusted_proxies=_trusted_proxies(table),
        connect_timeout=table.seconds("connect_timeout", 5.0),
        read_timeout=table.seconds("read_timeout", 60.0),
        tls_cert=tls_cert,
        tls_key=tls_key,
        upstream_ca=_upstream_ca(table, base_dir),
        upstream_verify=table.boolean("upstream_verify", True),
    )


def _trusted_proxies(table: _Table) -> tuple[IPNetwork, ...]:
    entries = table.strings("trusted_proxies") or []
    networks = (table.parse_at(f"trusted_proxies[{i}]", _parse_network, text) for i, text in enumerate(entries))
    return tuple(network for network in networks if network is not None)


def _existing_file(table: _Table, name: str, base_dir: str) -> str | None:
    path = table.string(name)
    if path is None:
        return None
    resolved = os.path.join(base_dir, os.path.expanduser(path))
    if not os.path.isfile(resolved):
        table.error(name, f"{_quoted(path)}: no such file (relative paths start at the config file's directory)")
        return None
    return resolved


def _tls_files(table: _Table, base_dir: str) -> tuple[str | None, str | None]:
    """Both or neither; the key must belong to the certificate, found out now rather than at the
    first connection."""
    given = {name: name in table.data for name in ("tls_cert", "tls_key")}
    if given["tls_cert"] != given["tls_key"]:
        absent = "tls_key" if given["tls_cert"] else "tls_cert"
        table.error(absent, "missing; tls_cert and tls_key go together (both set = TLS on listen)")
    cert = _existing_file(table, "tls_cert", base_dir)
    key = _existing_file(table, "tls_key", base_dir)
    if cert is None or key is None:
        return None, None
    try:
        ssl.create_default_context().load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError) as exc:
        table.error("tls_cert", f"cannot load a PEM certificate from it ({_ssl_reason(exc)})")
        return None, None
    try:
        # A callable password: an encrypted key fails here instead of prompting on the terminal.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        table.error("tls_key", f"cannot be used with tls_cert ({_ssl_reason(exc)}); give the unencrypted PEM private key of that certificate")
        return None, None
    return cert, key


def _upstream_ca(table: _Table, base_dir: str) -> str | None:
    path = _existing_file(table, "upstream_ca", base_dir)
    if path is None:
        return None
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        table.error("upstream_ca", f"cannot load CA certificates from it ({_ssl_reason(exc)}); give a PEM bundle")
        return None
    return path


def _ssl_reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def _admin_settings(table: _Table) -> AdminSettings:
    return AdminSettings(listen=table.parsed("listen", _parse_endpoint, "127.0.0.1:9901"))


def _reject_shared_listen(admin_table: _Table, admin: Endpoint | None, proxy: Endpoint | None) -> None:
    # Port 0 picks a fresh port for each listener, so only a fixed port can clash.
    if admin is not None and admin == proxy and admin.port != 0:
        admin_table.error("listen", f"{admin} is also [proxy].listen; give the admin listener another port, e.g. \"127.0.0.1:9901\"")


def _log_settings(table: _Table) -> LogSettings:
    return LogSettings(
        level=table.choice("level", LOG_LEVELS, "info", fold_case=True),
        format=table.choice("format", LOG_FORMATS, "json"),
    )


def _limits(table: _Table) -> Limits:
    defaults = Limits()
    return Limits(
        header_timeout=table.seconds("header_timeout", defaults.header_timeout),
        keepalive_timeout=table.seconds("keepalive_timeout", defaults.keepalive_timeout),
        max_request_line=table.integer("max_request_line", defaults.max_request_line, minimum=1),
        max_header_bytes=table.integer("max_header_bytes", defaults.max_header_bytes, minimum=1),
        max_headers=table.integer("max_headers", defaults.max_headers, minimum=1),
        max_in_flight=table.integer("max_in_flight", defaults.max_in_flight, minimum=1),
        max_body_bytes=table.integer("max_body_bytes", defaults.max_body_bytes, minimum=0),
    )


def _require_upstream(proxy_table: _Table, routes: list[Route]) -> None:
    if "upstream" in proxy_table.data:
        return
    if not routes:
        proxy_table.error("upstream", 'missing; set it (e.g. upstream = "http://127.0.0.1:3000") or add [[routes]] with an upstream each')
        return
    without = [route.name for route in routes if route.upstream is None]
    if without:
        names = ", ".join(_quoted(name) for name in without)
        proxy_table.error("upstream", f"missing, and routes {names} have no upstream of their own; set [proxy].upstream or give every route one")


# ---------------------------------------------------------------------------------------------
# Routes


def _routes(root: _Table, defaults: Policies, defaults_effective: dict[str, Any]) -> tuple[list[Route], list[dict[str, Any]]]:
    raw = root.data.get("routes", [])
    if not isinstance(raw, list):
        root.error("routes", f"expected an array of tables ([[routes]]), got {_describe(raw)}")
        return [], []
    routes: list[Route] = []
    effective: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            root.error(f"routes[{index}]", f"expected a table ([[routes]]), got {_describe(item)}")
            continue
        table = _Table(root.report, f"routes[{index}]", item, ROUTE_KEYS)
        route = _route(table, seen, index, defaults, defaults_effective)
        routes.append(route)
        effective.append(table.effective)
    return routes, effective


def _route(table: _Table, seen: dict[str, int], index: int, defaults: Policies,
           defaults_effective: dict[str, Any]) -> Route:
    name = _route_name(table, seen, index)
    hosts = _route_list(table, "hosts", _parse_host_pattern)
    paths = _route_list(table, "paths", _parse_path_glob)
    methods = _route_methods(table)
    return Route(
        name=name,
        policies=_policies(table, defaults, defaults_effective),
        hosts=hosts,
        paths=paths,
        methods=methods,
        upstream=table.parsed("upstream", _parse_upstream),
        host_matches=compile_host_patterns(hosts) if hosts is not None else None,
        path_matches=compile_path_globs(paths) if paths is not None else None,
    )


def _route_name(table: _Table, seen: dict[str, int], index: int) -> str:
    name = table.string("name", missing='every route needs a name = "..." (used in logs and `coxp check`)')
    if name is None:
        return f"routes[{index}]"
    if not name or any(not "!" <= char <= "~" for char in name):
        table.error("name", f"{_quoted(name)}: write a non-empty name of visible ASCII characters, without spaces")
    elif name == "default":
        table.error("name", '"default" is the implicit route of requests that match no route; choose another name')
    elif name in seen:
        table.error("name", f"{_quoted(name)} is already the name of routes[{seen[name]}]; route names are unique")
    else:
        seen[name] = index
    return name


def _route_list(table: _Table, name: str, parse: Callable[[str], str]) -> tuple[str, ...] | None:
    """`hosts` or `paths`: absent = None (matches everything), else the parsed entries."""
    if name not in table.data:
        table.effective[name] = None
        return None
    entries = table.strings(name)
    if entries is None:
        return None
    if not entries:
        table.error(name, f"an empty list matches nothing; omit {name} to match everything")
        return None
    parsed = [table.parse_at(f"{name}[{i}]", parse, text) for i, text in enumerate(entries)]
    return tuple(item for item in parsed if item is not None)


def _route_methods(table: _Table) -> frozenset[str] | None:
    if "methods" not in table.data:
        table.effective["methods"] = None
        return None
    entries = table.strings("methods")
    if entries is None:
        return None
    if not entries:
        table.error("methods", "an empty list matches nothing; omit methods to match every method")
        return None
    methods = set()
    for i, text in enumerate(entries):
        if text == "*":
            table.error(f"methods[{i}]", '"*" is not a method; omit methods to match every method')
            continue
        method = table.parse_at(f"methods[{i}]", _parse_method, text)
        if method is not None:
            methods.add(method)
    return frozenset(methods)


# ---------------------------------------------------------------------------------------------
# Policy tables


def _policies(parent: _Table, inherited: Policies, inherited_effective: dict[str, Any]) -> Policies:
    """The tables of `parent` (a route or [defaults]); a missing table is inherited whole."""
    compiled: dict[str, Any] = {}
    for name, (known, compile_table) in POLICY_COMPILERS.items():
        table = parent.subtable(name, known)
        if table is None:
            compiled[name] = getattr(inherited, name)
            if name in inherited_effective:
                parent.effective[name] = inherited_effective[name]
        else:
            compiled[name] = compile_table(table)
    _warn_unknown_report_to(parent)
    return Policies(**compiled)


def _warn_unknown_report_to(parent: _Table) -> None:
    """A `report_to` naming no endpoint of the route's own Reporting-Endpoints sends reports
    nowhere, unless the upstream defines that endpoint itself: a warning, not an error.
    Only the parent's own COOP/COEP tables are checked, so an inherited one warns once."""
    reporting = parent.effective.get("reporting") or {}
    endpoints = (reporting.get("endpoints") or {}) if reporting.get("mode") in SETTING_MODES else {}
    for name in ("coop", "coep"):
        table = parent.effective.get(name) if name in parent.data else None
        if not table or table.get("mode") not in SETTING_MODES:
            continue
        report_to = table.get("report_to")
        if isinstance(report_to, str) and report_to not in endpoints:
            parent.report.warnings.append(ConfigProblem(
                _join(parent.key(name), "report_to"),
                f"{_quoted(report_to)} is not an endpoint of this route's [reporting] table; add it there "
                "(reports go nowhere unless the upstream sends a Reporting-Endpoints header naming it)",
            ))


def _mode(table: _Table) -> str | None:
    return table.choice("mode", MODES, "set")


def _header_policy(table: _Table, name: str, mode: str | None, headers: tuple[tuple[str, str], ...],
                   owned: Iterable[str], errors_before: int) -> HeaderPolicy | None:
    if mode is None or len(table.report.errors) > errors_before:
        return None
    return HeaderPolicy(table=name, mode=mode, owned=frozenset(owned), headers=headers)  # type: ignore[arg-type]


def _policy_value(table: _Table, mode: str | None, choices: tuple[str, ...], example: str) -> str | None:
    """`policy`: required when the mode writes headers."""
    missing = None
    if mode in SETTING_MODES:
        missing = f'write policy = "{example}" (one of: {", ".join(choices)}), or mode = "remove" or "pass"'
    return table.choice("policy", choices, None, missing=missing)


def _corp_policy(table: _Table) -> HeaderPolicy | None:
    errors_before = len(table.report.errors)
    mode = _mode(table)
    policy = _policy_value(table, mode, CORP_POLICIES, "same-site")
    headers = (("Cross-Origin-Resource-Policy", policy),) if policy else ()
    return _header_policy(table, "corp", mode, headers, ["cross-origin-resource-policy"], errors_before)


def _coop_policy(table: _Table) -> HeaderPolicy | None:
    return _isolation_policy(table, "coop", "Cross-Origin-Opener-Policy", COOP_POLICIES, "same-origin")


def _coep_policy(table: _Table) -> HeaderPolicy | None:
    return _isolation_policy(table, "coep", "Cross-Origin-Embedder-Policy", COEP_POLICIES, "require-corp")


def _isolation_policy(table: _Table, name: str, header: str, choices: tuple[str, ...], example: str) -> HeaderPolicy | None:
    """COOP and COEP (HTML standard): a policy, an optional reporting endpoint, report-only or not."""
    errors_before = len(table.report.errors)
    mode = _mode(table)
    policy = _policy_value(table, mode, choices, example)
    report_to = table.parsed("report_to", _parse_sf_key)
    report_only = table.boolean("report_only", False)
    headers: tuple[tuple[str, str], ...] = ()
    if policy:
        value = f'{policy}; report-to="{report_to}"' if report_to else policy
        headers = ((f"{header}-Report-Only" if report_only else header, value),)
    owned = [header.lower(), f"{header.lower()}-report-only"]
    return _header_policy(table, name, mode, headers, owned, errors_before)


def _reporting_policy(table: _Table) -> HeaderPolicy | None:
    errors_before = len(table.report.errors)
    mode = _mode(table)
    endpoints = _reporting_endpoints(table, required=mode in SETTING_MODES)
    headers = (("Reporting-Endpoints", ", ".join(f'{key}="{url}"' for key, url in endpoints.items())),) if endpoints else ()
    return _header_policy(table, "reporting", mode, headers, ["reporting-endpoints"], errors_before)


def _reporting_endpoints(table: _Table, required: bool) -> dict[str, str]:
    """`endpoints = { name = "https://..." }` (W3C Reporting API, `Reporting-Endpoints`)."""
    if "endpoints" not in table.data:
        if required:
            table.error("endpoints", 'missing; write endpoints = { default = "https://reports.example.test/r" }')
        return {}
    endpoints = table.subtable("endpoints", None)
    if endpoints is None:
        return {}
    if not endpoints.data:
        table.error("endpoints", 'an empty table sends no header; add default = "https://reports.example.test/r" or remove [reporting]')
    result: dict[str, str] = {}
    for name, url in endpoints.data.items():
        if _is_extension(name):
            continue
        key = str(name)
        if not isinstance(url, str):
            endpoints.error(key, f"expected a URL string, got {_describe(url)}")
            continue
        endpoints.effective[key] = url
        if endpoints.parse_at(key, _parse_sf_key, key) is None or endpoints.parse_at(key, _parse_report_url, url) is None:
            continue
        if url.lower().startswith("http://") and not _is_loopback_origin(url):
            endpoints.warn(key, f"{_quoted(url)} is not https; browsers only send reports to secure endpoints")
        result[key] = url
    return result


def _is_loopback_origin(url: str) -> bool:
    """Secure Contexts §3.2: localhost and loopback addresses count as trustworthy over http."""
    match = URL.fullmatch(url)
    parts = AUTHORITY.fullmatch(match["authority"]) if match else None
    if parts is None:
        return False
    if parts["v6"] is not None:
        return parts["v6"] == "::1"
    host = parts["host"].lower()
    return host == "localhost" or host.endswith(".localhost") or host.startswith("127.")


# ---------------------------------------------------------------------------------------------
# CORS (Fetch standard, "CORS protocol"); strictness after jub0bs/cors


def _cors_policy(table: _Table) -> CorsPolicy | None:
    errors_before = len(table.report.errors)
    mode = _mode(table)
    credentials = table.boolean("allow_credentials", False)
    origins = _cors_origins(table, mode, bool(credentials))
    methods = _cors_methods(table)
    allow_headers = _header_names(table, "allow_headers", _check_request_header)
    expose_headers = _cors_expose_headers(table, bool(credentials))
    max_age = table.integer("max_age", None, minimum=0, maximum=MAX_AGE_LIMIT)
    private_network = table.boolean("allow_private_network", False)
    preflight = table.choice("preflight", ("proxy", "upstream"), "proxy")
    enforce = table.boolean("enforce", False)
    if len(table.report.errors) > errors_before:
        return None
    method_names, any_method = methods
    header_names, any_header = allow_headers
    return CorsPolicy(
        mode=mode,  # type: ignore[arg-type]
        origins=origins,
        allow_methods=frozenset(method_names),
        any_method=any_method,
        # With "*" the requested method / header list is echoed instead (CONTRACT §3).
        allow_methods_value=", ".join(method_names) or None,
        allow_headers=frozenset(header_names),
        any_header=any_header,
        allow_headers_value=", ".join(header_names) or None,
        expose_headers_value=_expose_value(expose_headers),
        allow_credentials=bool(credentials),
        max_age_value=None if max_age is None else str(max_age),
        allow_private_network=bool(private_network),
        preflight=preflight,  # type: ignore[arg-type]
        enforce=bool(enforce),
    )


def _cors_origins(table: _Table, mode: str | None, credentials: bool):
    patterns = table.strings("allow_origins")
    regexes = table.strings("allow_origin_regex")
    if patterns is None or regexes is None:
        return None
    matcher, errors, warnings = compile_origins(patterns, regexes)
    for subkey, message in errors:
        table.error(subkey, message)
    for subkey, message in warnings:
        table.warn(subkey, message)
    if mode in SETTING_MODES and matcher.allows_nothing and not errors:
        table.error("allow_origins", 'allows no origin; list them, e.g. allow_origins = ["https://app.example.test"], '
                    'or set mode = "remove" or "pass"')
    if credentials:
        _check_credentialed_origins(table, patterns)
    return matcher


def _check_credentialed_origins(table: _Table, patterns: list[str]) -> None:
    if "*" in patterns:
        # Fetch standard, CORS check: `*` is never accepted on a request with credentials.
        table.error(f"allow_origins[{patterns.index('*')}]", '"*" cannot be used with allow_credentials = true '
                    "(browsers refuse it); list the trusted origins instead")
    for subkey, message in credential_warnings(patterns):
        table.warn(subkey, message)


def _cors_methods(table: _Table) -> tuple[list[str], bool]:
    """`allow_methods`: (normalised names in written order without duplicates, any_method)."""
    entries = table.strings("allow_methods") or []
    if "*" in entries:
        _reject_mixed_wildcard(table, "allow_methods", entries, "method")
        return [], True
    methods: list[str] = []
    for i, text in enumerate(entries):
        method = table.parse_at(f"allow_methods[{i}]", _parse_method, text)
        if method is None:
            continue
        if method.upper() in FORBIDDEN_METHODS:
            table.error(f"allow_methods[{i}]", f"{_quoted(text)} is a forbidden method (Fetch standard): "
                        "browsers never send it; remove it")
        elif method not in methods:
            methods.append(method)
    return methods, False


def _reject_mixed_wildcard(table: _Table, name: str, entries: list[str], what: str) -> None:
    if len(entries) > 1:
        table.error(f"{name}[{entries.index('*')}]", f'"*" already allows every {what}; write {name} = ["*"] alone')


def _header_names(table: _Table, name: str, check: Callable[[_Table, str, str], None]) -> tuple[list[str], bool]:
    """A list of header names (RFC 9110 §5.1 tokens): lower-cased, duplicates collapsed, or ["*"]."""
    entries = table.strings(name) or []
    if "*" in entries:
        _reject_mixed_wildcard(table, name, entries, "header")
        return [], True
    names: list[str] = []
    for i, text in enumerate(entries):
        key = f"{name}[{i}]"
        if not TOKEN.fullmatch(text):
            table.error(key, f'{_quoted(text)} is not a header name (an HTTP token, RFC 9110 §5.1); write e.g. "X-Request-Id"')
            continue
        lowered = text.lower()
        check(table, key, lowered)
        if lowered not in names:
            names.append(lowered)
    return names, False


def _check_request_header(table: _Table, key: str, name: str) -> None:
    if name in FORBIDDEN_REQUEST_HEADERS or name.startswith(FORBIDDEN_REQUEST_PREFIXES):
        table.warn(key, f'"{name}" is a forbidden request-header name (Fetch standard): scripts cannot set it, so allowing it has no effect')
    elif name in RESPONSE_ONLY_CORS_HEADERS:
        table.warn(key, f'"{name}" is a response header; a request never carries it, remove it')


def _check_response_header(table: _Table, key: str, name: str) -> None:
    if name in FORBIDDEN_RESPONSE_HEADERS:
        table.error(key, f'"{name}" can never be exposed: browsers hide it from scripts whatever the server says (Fetch standard, forbidden response-header name); remove it')
    elif name in UNEXPOSABLE_HEADERS:
        table.warn(key, f'"{name}" is not a header of an actual response; exposing it has no effect, remove it')


def _cors_expose_headers(table: _Table, credentials: bool) -> tuple[list[str], bool]:
    names, any_header = _header_names(table, "expose_headers", _check_response_header)
    if any_header and credentials:
        # Fetch standard: in Access-Control-Expose-Headers, `*` is a wildcard only for requests
        # without credentials; with credentials it would name a header called "*".
        table.error("expose_headers", '"*" exposes nothing with allow_credentials = true (browsers read it as a header named "*"); list the header names')
    return names, any_header


def _expose_value(expose: tuple[list[str], bool]) -> str | None:
    names, any_header = expose
    return "*" if any_header else (", ".join(names) or None)


# Each policy table: its keys and the function that compiles it.
POLICY_COMPILERS: dict[str, tuple[tuple[str, ...], Callable[[_Table], Any]]] = {
    "cors": (CORS_KEYS, _cors_policy),
    "corp": (CORP_KEYS, _corp_policy),
    "coop": (COOP_COEP_KEYS, _coop_policy),
    "coep": (COOP_COEP_KEYS, _coep_policy),
    "reporting": (REPORTING_KEYS, _reporting_policy),
}


# ---------------------------------------------------------------------------------------------
# `coxp check` summary


def _route_summary(route: Route, config: Config, effective: Mapping[str, Any]) -> str:
    upstream = route.upstream or config.proxy.upstream
    parts = [
        f"hosts={','.join(route.hosts) if route.hosts else 'any'}",
        f"paths={','.join(route.paths) if route.paths else 'any'}",
        f"methods={','.join(sorted(route.methods)) if route.methods else 'any'}",
        f"upstream={upstream.url if upstream else 'none (404)'}",
    ]
    if route.policies.cors is not None:
        parts.append(f"cors={_cors_summary(route.policies.cors, effective.get('cors') or {})}")
    for policy in route.policies.header_policies:
        parts.append(f"{policy.table}={_header_policy_summary(policy)}")
    return " ".join(parts)


def _cors_summary(policy: CorsPolicy, effective: Mapping[str, Any]) -> str:
    if policy.mode not in SETTING_MODES:
        return policy.mode
    count = len(effective.get("allow_origins", [])) + len(effective.get("allow_origin_regex", []))
    details = ["any origin" if policy.origins.allows_any else f"origins: {count} pattern{'s' * (count != 1)}"]
    if policy.allow_credentials:
        details.append("credentials")
    if policy.any_method or policy.allow_methods:
        details.append(f"methods: {'*' if policy.any_method else ','.join(sorted(policy.allow_methods))}")
    if policy.any_header or policy.allow_headers:
        details.append(f"headers: {'*' if policy.any_header else len(policy.allow_headers)}")
    if policy.preflight == "upstream":
        details.append("preflight: upstream")
    if policy.enforce:
        details.append("enforce")
    return f"{policy.mode}({', '.join(details)})"


def _header_policy_summary(policy: HeaderPolicy) -> str:
    if policy.mode not in SETTING_MODES or not policy.headers:
        return policy.mode
    name, value = policy.headers[0]
    if policy.table == "reporting":
        value = ",".join(item.split("=", 1)[0] for item in value.split(", "))
    elif name.endswith("-Report-Only"):
        value += ", report-only"
    return f"{policy.mode}({value})"
