"""The `coxp` command line: run, check, health, explain, report, learn, dev, init, demo."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy import __version__
from proxy.config import load_config, summarize
from proxy.errors import ConfigError
from proxy.init import DEFAULT_PRESET, PRESETS

if TYPE_CHECKING:
    from proxy.logfile import LogReader

EXIT_CONFIG_ERROR = 2


def _overrides(args: argparse.Namespace) -> dict:
    proxy = {k: v for k, v in (("listen", args.listen), ("upstream", args.upstream)) if v is not None}
    log = {k: v for k, v in (("format", getattr(args, "log_format", None)), ("level", getattr(args, "log_level", None))) if v}
    return {k: v for k, v in (("proxy", proxy), ("log", log)) if v}


def _print_problems(error: ConfigError) -> int:
    for line in error.lines():
        print(line, file=sys.stderr)
    return EXIT_CONFIG_ERROR


def _print_warnings(warnings: tuple[str, ...]) -> None:
    for line in warnings:
        print(line, file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from proxy.process import run

    overrides = _overrides(args)
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        return _print_problems(error)
    _print_warnings(config.warnings)
    return _serving("run", lambda: run(config, args.config, overrides, watch=args.watch))


def _serving(command: str, start: Callable[[], int]) -> int:
    """Run a serving command; a port that cannot be bound is a one-line error, not a traceback."""
    try:
        return start()
    except OSError as error:
        print(f"coxp {command}: {error}", file=sys.stderr)
        return 1


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as error:
        return _print_problems(error)
    _print_warnings(config.warnings)
    for line in summarize(config):
        print(line)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from proxy.probe import admin_endpoint, probe

    target = "/readyz" if args.ready else "/healthz"
    try:
        endpoint = admin_endpoint(args.config)
        status, text = probe(endpoint, target)
    except (ValueError, OSError) as error:
        print(f"coxp health: {error}", file=sys.stderr)
        return 1
    print(f"{target} on {endpoint}: {status} {text}")
    return 0 if status == 200 else 1


def cmd_explain(args: argparse.Namespace) -> int:
    from proxy.explain import ExplainUsageError, explain, parse_header

    try:
        config = load_config(args.config)
    except ConfigError as error:
        return _print_problems(error)
    try:
        result = explain(
            config,
            args.method,
            args.url,
            [parse_header(h) for h in args.header],
            [parse_header(h) for h in args.upstream_header],
        )
    except ExplainUsageError as error:
        print(f"coxp explain: {error}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(result.as_json() + b"\n")
    else:
        print(result.as_text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from proxy.logfile import LogReader, LogReadError
    from proxy.summary import render_rich, render_text, summarize_events, summarize_log

    config = None
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as error:
            return _print_problems(error)
    reader = LogReader(args.logs)
    try:
        summary = summarize_events(reader.events())
    except LogReadError as error:
        print(f"coxp report: {error}", file=sys.stderr)
        return 1
    _print_skipped("report", reader)
    result = summarize_log(summary, config, reader.lines, reader.skipped)
    if args.json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    elif sys.stdout.isatty():
        from rich.console import Console

        render_rich(result, Console())
    else:
        sys.stdout.write(render_text(result))
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from proxy.config import load_config_text
    from proxy.learn import LearnError, learn, observe
    from proxy.logfile import LogReader, LogReadError

    try:
        config = load_config(args.config)
        with open(args.config, encoding="utf-8") as file:
            text = file.read()
    except ConfigError as error:
        return _print_problems(error)
    reader = LogReader(args.logs)
    try:
        observed, notes = observe(reader.events())
        learned, config_notes = learn(text, config, observed)
    except (LogReadError, LearnError) as error:
        print(f"coxp learn: {error}", file=sys.stderr)
        return 1
    _print_skipped("learn", reader)
    if not observed:
        notes.append("no cross-origin request in the log: every table is kept as it was")
    for note in config_notes + notes:
        print(f"coxp learn: {note}", file=sys.stderr)
    try:
        load_config_text(learned, source=args.config, base_dir=os.path.dirname(os.path.abspath(args.config)))
    except ConfigError as error:  # a defect of learn itself: never print a config that does not load
        print("coxp learn: the learned config does not pass check:", file=sys.stderr)
        return _print_problems(error)
    sys.stdout.write(learned)
    return 0


def _print_skipped(command: str, reader: LogReader) -> None:
    if reader.skipped:
        print(f"coxp {command}: {reader.skipped} of {reader.lines} lines skipped (not JSON objects)", file=sys.stderr)
    if reader.lines and reader.skipped == reader.lines:
        print(f'coxp {command}: no line was JSON: the decision log must be written with [log] format = "json"',
              file=sys.stderr)


def cmd_dev(args: argparse.Namespace) -> int:
    from proxy.dev import DevOptions, run_dev

    options = DevOptions(args.upstream, args.listen, tuple(args.allow_origin), tuple(args.expose_header),
                         args.isolate, args.log_format)
    return _serving("dev", lambda: run_dev(options, args.print_config))


def cmd_init(args: argparse.Namespace) -> int:
    from proxy.init import run_init

    return run_init(args.preset, args.output, args.force)


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return _serving("demo", lambda: run_demo(args.port))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coxp", description="A reverse proxy that owns the cross-origin policy headers (CORS, CORP, COOP, COEP)."
    )
    parser.add_argument("--version", action="version", version=f"coxp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="start the proxy")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="the TOML config to serve")
    run.add_argument("--listen", metavar="HOST:PORT", help="overrides [proxy] listen, e.g. 127.0.0.1:8080")
    run.add_argument("--upstream", metavar="URL", help="overrides [proxy] upstream, e.g. http://127.0.0.1:3000")
    run.add_argument("--log-format", choices=["json", "console"], type=str.lower,
                     help="overrides [log] format: json (one object per line) or console (readable lines)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"], type=str.lower,
                     help="overrides [log] level")
    run.add_argument("--watch", action="store_true",
                     help="reload when the config file changes, as on SIGHUP (an invalid file keeps the old config)")
    run.set_defaults(func=cmd_run)

    check = commands.add_parser("check", help="validate a config and summarise its routes")
    check.add_argument("-c", "--config", required=True, metavar="FILE",
                       help="the TOML config to validate (every problem is listed; exit 2 on errors)")
    check.set_defaults(func=cmd_check)

    health = commands.add_parser("health", help="exit 0 when the running coxp's admin /healthz (or /readyz) says 200")
    health.add_argument("-c", "--config", required=True, metavar="FILE", help="the config whose [admin] listen to ask")
    health.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")
    health.set_defaults(func=cmd_health)

    explain = commands.add_parser("explain", help="dry-run one request through the decision code")
    explain.add_argument("-c", "--config", required=True, metavar="FILE", help="the TOML config to decide with")
    explain.add_argument("-X", "--method", default="GET", help="the request method (default GET); a preflight "
                         "is OPTIONS with Origin and Access-Control-Request-Method headers")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'",
                         help="a request header, e.g. 'Origin: https://app.example.test' (repeatable)")
    explain.add_argument("--upstream-header", action="append", default=[], metavar="'Name: value'",
                         help="a header of the simulated upstream response")
    explain.add_argument("--json", action="store_true", help="print the explanation as one JSON object")
    explain.add_argument("url", help="the absolute URL the browser would request, e.g. https://api.example.test/v1/x")
    explain.set_defaults(func=cmd_explain)

    report = commands.add_parser("report", help="summarise decision logs: what breaks, and what to change")
    report.add_argument("logs", nargs="*", metavar="FILE", help="JSON-lines decision logs; - or none = stdin")
    report.add_argument("-c", "--config", metavar="FILE", help="the config the logs ran under (names key paths)")
    report.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    report.set_defaults(func=cmd_report)

    learn = commands.add_parser("learn", help="print FILE with CORS tables tightened to the traffic in the logs")
    learn.add_argument("-c", "--config", required=True, metavar="FILE",
                       help="the config the logs ran under; printed with its CORS tables tightened")
    learn.add_argument("logs", nargs="*", metavar="LOG", help="JSON-lines decision logs; - or none = stdin")
    learn.set_defaults(func=cmd_learn)

    dev = commands.add_parser(
        "dev", help="zero-config local-development CORS proxy",
        description="Put coxp in front of your API so pages on localhost may call it with cookies: "
                    "CORS set mode, credentials allowed, any method and request header.",
        epilog="Call the API as http://localhost:PORT from pages on http://localhost:*; localhost and "
               "127.0.0.1 are different sites, and the browser drops SameSite=Lax cookies between them.",
    )
    dev.add_argument("--upstream", required=True, metavar="URL",
                     help="your API, scheme://host[:port], e.g. http://127.0.0.1:3000")
    dev.add_argument("--listen", default="localhost:8080", metavar="HOST:PORT",
                     help="where coxp listens (default: localhost:8080, IPv4 and IPv6 loopback)")
    dev.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                     help="a page origin allowed to call the API, e.g. http://localhost:5173 or "
                          "http://localhost:* (repeatable; default: http://localhost:* and http://127.0.0.1:*)")
    dev.add_argument("--expose-header", action="append", default=[], metavar="NAME",
                     help="a response header the page's script may read, e.g. X-Request-Id (repeatable; "
                          "default: none beyond the CORS-safelisted ones)")
    dev.add_argument("--isolate", action="store_true",
                     help="also send COOP same-origin and COEP require-corp on every response, so pages "
                          "served through coxp are cross-origin isolated (SharedArrayBuffer)")
    dev.add_argument("--log-format", choices=["json", "console"], type=str.lower, default="console",
                     help="the decision log on stdout: console (readable lines, the default) or json")
    dev.add_argument("--print-config", action="store_true",
                     help="print the equivalent TOML (for coxp run -c) and exit")
    dev.set_defaults(func=cmd_dev)

    init = commands.add_parser(
        "init", help="write a commented starter config",
        description="Print a commented starter config (or write it to a new file) that passes coxp check.",
    )
    init.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET,
                      help="local-dev: what coxp dev runs; legacy-api: a cookie-session API called from known "
                           "sites; staging-hardening: cross-origin isolation tried in report-only mode first "
                           f"(default: {DEFAULT_PRESET})")
    init.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout; an existing "
                      "file is kept unless --force is given")
    init.add_argument("--force", action="store_true", help="with -o: overwrite FILE if it exists")
    init.set_defaults(func=cmd_init)

    demo = commands.add_parser(
        "demo", help="start a demo origin with coxp in front of it",
        description="Serve a page that shows, panel by panel, what each cross-origin header does.",
    )
    demo.add_argument("--port", type=int, default=8080, metavar="N",
                      help="coxp's port (default 8080; 0 picks a free one); the demo origin takes a free port")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status
