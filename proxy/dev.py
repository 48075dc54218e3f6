"""`coxp dev`: the local-development proxy, its TOML, its start-up banner, its flag errors.

The command is a config written from its flags (`--print-config` shows it, and
`config/local-dev.toml` is that text for `--upstream http://127.0.0.1:3000`), so `coxp dev` and
`coxp run -c` of the printed file behave the same.
"""
from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field

from proxy.errors import ConfigError, ConfigProblem
from proxy.model import Config

DEFAULT_LISTEN = "localhost:8080"
DEFAULT_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*")
SOURCE = "coxp dev"
ROUTE_SUFFIX = '; in route "dev"'  # config errors name the route; a flag error names the flag


@dataclass(frozen=True)
class DevOptions:
    upstream: str
    listen: str = DEFAULT_LISTEN
    allow_origins: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    isolate: bool = False
    log_format: str = "console"
    origins: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origins", self.allow_origins or DEFAULT_ORIGINS)

    def command_line(self) -> str:
        """The `coxp dev` flags that give this config (defaults left out)."""
        words = ["coxp", "dev", "--upstream", self.upstream]
        if self.listen != DEFAULT_LISTEN:
            words += ["--listen", self.listen]
        for origin in self.allow_origins:
            words += ["--allow-origin", origin]
        for name in self.expose_headers:
            words += ["--expose-header", name]
        if self.isolate:
            words.append("--isolate")
        if self.log_format != "console":
            words += ["--log-format", self.log_format]
        return shlex.join(words)


def config_text(options: DevOptions) -> str:
    """The TOML `coxp dev` runs: permissive CORS for local development, credentials included."""
    text = f"""# Local development: a front end on one port (a Vite or webpack dev server) calls an API on
# another. Two ports are two origins to a browser, so the API's responses need CORS headers;
# this proxy adds them. Written by:
#   {options.command_line()} --print-config
# Run it with `coxp run -c THIS_FILE`.

[proxy]
# Call the API as http://localhost:PORT from the front end, not 127.0.0.1: a page on
# localhost:5173 and an API on 127.0.0.1 are different sites, and the browser then drops
# SameSite=Lax cookies (session logins fail). "localhost" listens on IPv4 and IPv6 loopback.
listen = {_toml(options.listen)}
upstream = {_toml(options.upstream)}

[log]
# One readable line per request: status, method, URL, origin, the CORS decision and why.
format = {_toml(options.log_format)}

[[routes]]
name = "dev"

[routes.cors]
# `set`: the proxy owns the CORS headers; any the API sends itself are replaced.
mode = "set"
# Pages allowed to call the API with the user's cookies. Dev servers pick ports freely, hence :*.
allow_origins = {_toml_list(options.origins)}
# Any method and request header (preflights are answered by the proxy).
allow_methods = ["*"]
allow_headers = ["*"]
# Response headers the page's script may read (others read as null), e.g. ["X-Request-Id"].
expose_headers = {_toml_list(options.expose_headers)}
# Cookies and Authorization work: the page's origin is echoed, never "*".
allow_credentials = true
# Chrome asks before a public page calls a private address (Private Network Access).
allow_private_network = true
"""
    if options.isolate:
        text += """
# --isolate: cross-origin isolation for the pages served through this proxy, so that
# `crossOriginIsolated` is true and SharedArrayBuffer exists. Every subresource from
# another origin must then allow embedding (CORP or CORS).
[routes.coop]
policy = "same-origin"

[routes.coep]
policy = "require-corp"
"""
    return text


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_toml(v) for v in values) + "]"


# Key paths of the generated config that come from a flag, and that flag's values.
_FLAG_KEYS = (
    (re.compile(r"proxy\.listen"), "--listen", "listen"),
    (re.compile(r"proxy\.upstream"), "--upstream", "upstream"),
    (re.compile(r"routes\[0\]\.cors\.allow_origins\[(\d+)\]"), "--allow-origin", "allow_origins"),
    (re.compile(r"routes\[0\]\.cors\.expose_headers\[(\d+)\]"), "--expose-header", "expose_headers"),
)


def flag_problem_line(problem: ConfigProblem, options: DevOptions) -> str:
    """A problem in the generated config, reported against the flag it came from:
    `coxp dev: --allow-origin "https://a.test/x": message`."""
    for pattern, flag, attribute in _FLAG_KEYS:
        match = pattern.fullmatch(problem.key)
        if match is None:
            continue
        value = getattr(options, attribute)
        if match.groups():
            value = value[int(match[1])]
        shown = flag if _toml(value) in problem.message else f"{flag} {_toml(value)}"
        return f"{SOURCE}: {shown}: {problem.message.removesuffix(ROUTE_SUFFIX)}"
    return problem.render(SOURCE)


def flag_warning_line(line: str, options: DevOptions) -> str:
    """A rendered check warning (`coxp dev: KEY: warning: message`) moved onto its flag."""
    key, _, message = line.removeprefix(f"{SOURCE}: ").partition(": ")
    return flag_problem_line(ConfigProblem(key, message.removeprefix("warning: ")), options)


def load(options: DevOptions) -> tuple[str, Config]:
    from proxy.config import load_config_text

    text = config_text(options)
    return text, load_config_text(text, source=SOURCE)


def banner(address: str, options: DevOptions) -> str:
    port = address.rpartition(":")[2]
    host = address.rpartition(":")[0]
    url = f"http://{host}:{port}" if host not in ("0.0.0.0", "[::]") else f"http://localhost:{port}"
    origins = ", ".join(options.origins)
    lines = [
        "coxp dev",
        f"  call        {url}   (instead of {options.upstream}, from your front end's code)",
        f"  upstream    {options.upstream}",
        f"  origins     {origins}   (with cookies; add yours with --allow-origin)",
    ]
    if options.expose_headers:
        lines.append(f"  exposed     {', '.join(options.expose_headers)}")
    if options.isolate:
        lines.append("  isolated    COOP same-origin + COEP require-corp on every response")
    lines += [
        "  cookies     localhost and 127.0.0.1 are different sites: open your page and call the API",
        "              with the same host name, or the browser drops SameSite=Lax session cookies",
        f"  as a file   {options.command_line()} --print-config > coxp.toml",
        "",
    ]
    return "\n".join(lines)


def run_dev(options: DevOptions, print_config: bool) -> int:
    from proxy.process import run

    try:
        text, config = load(options)
    except ConfigError as error:
        for problem in error.problems:
            print(flag_problem_line(problem, options), file=sys.stderr)
        return 2
    if print_config:
        sys.stdout.write(text)
        return 0
    for line in config.warnings:
        print(f"warning: {flag_warning_line(line, options)}", file=sys.stderr)

    def announce(address: str) -> None:
        print(banner(address, options), file=sys.stderr, flush=True)

    return run(config, None, None, announce=announce)
