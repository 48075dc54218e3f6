"""The command line (README, "Command line"): check, explain, dev, demo, run's flags, `python -m proxy`.

Every command runs as a real subprocess (`python -m proxy ...`); the serving ones are stopped
with SIGTERM at teardown.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from harness import PYTHON, WAIT, Coxp, free_port, http_request, norm, run_cli

ORIGIN = "https://app.example.test"


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return name  # relative: errors must name the file as given on the command line


# --------------------------------------------------------------------------------------------
# check

GOOD = """
[proxy]
upstream = "http://127.0.0.1:3000"

[defaults.cors]
mode = "remove"

[[routes]]
name = "pages"
hosts = ["*.example.test"]
[routes.cors]
allow_origins = ["https://*.github.io", "https://app.example.test"]

[[routes]]
name = "assets"
paths = ["/assets/*"]
[routes.corp]
policy = "cross-origin"
"""


def test_check_ok_prints_one_line_per_route_plus_default_and_warns_on_stderr(tmp_path):
    name = write(tmp_path, "good.toml", GOOD)
    result = run_cli("check", "-c", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["pages", "assets", "default"]
    assert "github.io" in result.stderr and "warning" in result.stderr
    assert result.stderr.count("\n") == 1  # one warning, one line
    assert result.stderr.startswith("good.toml: routes[0].cors.allow_origins[0]: warning: ")


def test_check_without_warnings_prints_nothing_on_stderr(tmp_path):
    name = write(tmp_path, "quiet.toml", '[proxy]\nupstream = "http://127.0.0.1:3000"\n')
    result = run_cli("check", "-c", name, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["default"]


ROUTE = '[proxy]\nupstream = "http://127.0.0.1:3000"\n[[routes]]\nname = "ok"\n[[routes]]\nname = "r"\n'

# (id, file text, the key paths expected on stderr, a fragment of one message)
BAD_FILES = [
    ("star-with-credentials", ROUTE + '[routes.cors]\nallow_origins = ["*"]\nallow_credentials = true\n',
     ["routes[1].cors.allow_origins[0]"], "credentials"),
    ("origin-with-path", ROUTE + '[routes.cors]\nallow_origins = ["https://a.test/"]\n',
     ["routes[1].cors.allow_origins[0]"], "has a path"),
    ("unknown-key", ROUTE + 'pathz = ["/x"]\n', ["routes[1].pathz"], "paths"),
    ("public-suffix-wildcard", ROUTE + '[routes.cors]\nallow_origins = ["https://*.com"]\n',
     ["routes[1].cors.allow_origins[0]"], "com"),
    ("forbidden-method", ROUTE + '[routes.cors]\nallow_origins = ["https://a.test"]\nallow_methods = ["TRACE"]\n',
     ["routes[1].cors.allow_methods[0]"], "TRACE"),
    ("bad-header-name", ROUTE + '[routes.cors]\nallow_origins = ["https://a.test"]\nallow_headers = ["x y"]\n',
     ["routes[1].cors.allow_headers[0]"], "header name"),
    ("max-age-range", ROUTE + '[routes.cors]\nallow_origins = ["https://a.test"]\nmax_age = 86401\n',
     ["routes[1].cors.max_age"], "86400"),
    ("bad-regex", ROUTE + '[routes.cors]\nallow_origin_regex = ["("]\n',
     ["routes[1].cors.allow_origin_regex[0]"], "regular expression"),
    ("expose-set-cookie", ROUTE + '[routes.cors]\nallow_origins = ["https://a.test"]\nexpose_headers = ["Set-Cookie"]\n',
     ["routes[1].cors.expose_headers[0]"], "set-cookie"),
    ("no-origin-allowed", ROUTE + '[routes.cors]\nmode = "set"\n', ["routes[1].cors"], ""),
    ("star-not-alone", ROUTE + '[routes.cors]\nallow_origins = ["*", "https://a.test"]\n',
     ["routes[1].cors.allow_origins"], ""),
    ("tls-cert-alone", '[proxy]\nupstream = "http://127.0.0.1:3000"\ntls_cert = "c.pem"\n', ["proxy.tls_"], ""),
    ("bad-policy", ROUTE + '[routes.coop]\npolicy = "same-site"\n', ["routes[1].coop.policy"], "same-origin"),
    ("bad-mode", '[proxy]\nupstream = "http://127.0.0.1:3000"\n[defaults.corp]\nmode = "replace"\npolicy = "same-site"\n',
     ["defaults.corp.mode"], ""),
    ("several-at-once", ROUTE + '[routes.cors]\nallow_origins = ["https://a.test/x", "ftp://b.test"]\nmax_age = -1\n',
     ["routes[1].cors.allow_origins[0]", "routes[1].cors.allow_origins[1]", "routes[1].cors.max_age"], ""),
]


@pytest.mark.parametrize("text, keys, fragment", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_check_bad_file_exits_2_with_file_key_message_lines(tmp_path, text, keys, fragment):
    name = write(tmp_path, "bad.toml", text)
    result = run_cli("check", "-c", name, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines, "no error printed"
    for line in lines:
        assert re.fullmatch(r"bad\.toml: [\w.\[\]-]+: .+", line), line
    for key in keys:
        assert any(line.startswith(f"bad.toml: {key}") for line in lines), (key, lines)
    assert fragment.lower() in result.stderr.lower()


def test_toml_syntax_error_names_line_and_column(tmp_path):
    name = write(tmp_path, "syntax.toml", '[proxy]\nupstream = "http://127.0.0.1:3000"\nlisten = "x\n')
    result = run_cli("check", "-c", name, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("syntax.toml: ")
    assert re.search(r"line 3\b", result.stderr) and re.search(r"column \d+", result.stderr), result.stderr


@pytest.mark.parametrize("command", [["run"], ["explain", "http://a.test/"], ["check"]])
def test_config_errors_exit_2_in_run_explain_and_check(tmp_path, command):
    name = write(tmp_path, "bad.toml", ROUTE + '[routes.cors]\nallow_origins = ["https://a.test/"]\n')
    result = run_cli(command[0], "-c", name, *command[1:], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith("bad.toml: routes[1].cors.allow_origins[0]: ")


def test_shipped_example_configs_pass_check():
    configs = sorted((Path(__file__).resolve().parents[1] / "config").glob("*.toml"))
    assert configs
    for path in configs:
        result = run_cli("check", "-c", str(path))
        assert result.returncode == 0, (path, result.stderr)
        assert result.stdout.splitlines()[-1].startswith("default")


# --------------------------------------------------------------------------------------------
# explain

EXPLAIN = """
[proxy]
upstream = "http://127.0.0.1:3000"

[[routes]]
name = "api"
paths = ["/api/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
allow_methods = ["PUT"]
allow_headers = ["Content-Type"]
allow_credentials = true
max_age = 600
[routes.coop]
policy = "same-origin"
"""


def explain(tmp_path, *args: str) -> subprocess.CompletedProcess:
    name = write(tmp_path, "explain.toml", EXPLAIN)
    return run_cli("explain", "-c", name, *args, cwd=tmp_path)


def test_explain_preflight_json_is_the_whole_synthesized_response(tmp_path):
    result = explain(tmp_path, "--json", "-X", "OPTIONS", "-H", f"Origin: {ORIGIN}",
                     "-H", "Access-Control-Request-Method: PUT", "-H", "Access-Control-Request-Headers: content-type",
                     "http://api.example.test/api/items")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["route"] == "api" and out["cors"] == "preflight-allowed" and out["reason"] is None
    assert out["answered_by_proxy"] is True and out["status"] == 204 and out["body"] == ""
    assert norm([tuple(h) for h in out["headers"]]) == norm([
        ("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Allow-Methods", "PUT"), ("Access-Control-Allow-Headers", "content-type"),
        ("Access-Control-Max-Age", "600"), ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")])


def test_explain_denied_preflight_json_has_status_body_and_reason(tmp_path):
    result = explain(tmp_path, "--json", "-X", "OPTIONS", "-H", f"Origin: {ORIGIN}",
                     "-H", "Access-Control-Request-Method: PUT", "-H", "Access-Control-Request-Headers: x-secret",
                     "http://api.example.test/api/items")
    out = json.loads(result.stdout)
    assert (out["cors"], out["reason"], out["status"]) == ("preflight-denied", "header-not-allowed", 403)
    assert out["body"] == "header-not-allowed: CORS preflight denied\n"
    names = {n.lower() for n, _ in out["headers"]}
    assert not any(n.startswith("access-control-") for n in names)
    assert {"content-type", "content-length", "vary", "cross-origin-opener-policy"} == names


def test_explain_preflight_readable(tmp_path):
    result = explain(tmp_path, "-X", "OPTIONS", "-H", f"Origin: {ORIGIN}", "-H", "Access-Control-Request-Method: PUT",
                     "http://api.example.test/api/items")
    assert result.returncode == 0
    text = result.stdout
    assert re.search(r"^route:\s+api$", text, re.M)
    assert re.search(r"^classification:\s+preflight-allowed$", text, re.M)
    assert "204" in text
    assert f"  Access-Control-Allow-Origin: {ORIGIN}" in text.splitlines()
    assert "  Access-Control-Allow-Methods: PUT" in text.splitlines()
    with pytest.raises(ValueError):
        json.loads(text)


def test_explain_actual_request_with_upstream_headers(tmp_path):
    result = explain(tmp_path, "--json", "-X", "POST", "-H", f"Origin: {ORIGIN}",
                     "--upstream-header", "Access-Control-Allow-Origin: *", "--upstream-header", "Vary: Accept",
                     "--upstream-header", "X-Up: 1", "http://api.example.test/api/items")
    out = json.loads(result.stdout)
    assert (out["route"], out["cors"], out["reason"], out["status"]) == ("api", "allowed", None, None)
    assert out["answered_by_proxy"] is False and out["body"] is None
    assert norm([tuple(h) for h in out["headers"]]) == norm([
        ("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Credentials", "true"),
        ("Cross-Origin-Opener-Policy", "same-origin"), ("Vary", "Accept, Origin"), ("X-Up", "1")])
    assert sorted(out["headers_removed"]) == ["access-control-allow-origin"]
    assert "vary" in out["headers_set"] and "access-control-allow-origin" in out["headers_set"]


def test_explain_denied_actual_request_readable(tmp_path):
    result = explain(tmp_path, "-H", "Origin: https://evil.test", "http://api.example.test/api/items")
    assert result.returncode == 0
    assert re.search(r"^classification:\s+denied$", result.stdout, re.M)
    assert re.search(r"^reason:\s+origin-not-allowed$", result.stdout, re.M)
    assert "Access-Control-Allow-Origin" not in result.stdout


def test_explain_default_route_and_same_origin(tmp_path):
    out = json.loads(explain(tmp_path, "--json", "-H", "Origin: https://api.example.test",
                             "https://api.example.test/api/x").stdout)
    assert out["cors"] == "same-origin"
    out = json.loads(explain(tmp_path, "--json", "http://api.example.test/other").stdout)
    assert (out["route"], out["cors"]) == ("default", "off")


def test_explain_shows_both_path_views_and_the_400_when_they_disagree(tmp_path):
    out = json.loads(explain(tmp_path, "--json", "http://api.example.test/x/..%2fapi/items").stdout)
    assert (out["route"], out["cors"], out["reason"], out["status"]) == (None, None, "ambiguous-path", 400)
    assert out["normalised_path"] == "/api/items" and out["body"] == "400 ambiguous-path\n"
    assert "'default'" in out["note"] and "'api'" in out["note"] and "not contacted" in out["note"]
    text = explain(tmp_path, "http://api.example.test/x/..%2fapi/items").stdout
    assert re.search(r"^normalised:\s+/api/items\b", text, re.M)
    assert re.search(r"^reason:\s+ambiguous-path$", text, re.M)


def test_explain_shows_the_normalised_view_when_both_select_one_route(tmp_path):
    out = json.loads(explain(tmp_path, "--json", "http://api.example.test/api//%7eitems").stdout)
    assert (out["route"], out["normalised_path"], out["status"]) == ("api", "/api/~items", None)
    out = json.loads(explain(tmp_path, "--json", "http://api.example.test/api/items").stdout)
    assert out["normalised_path"] is None
    assert "normalised:" not in explain(tmp_path, "http://api.example.test/api/items").stdout


@pytest.mark.parametrize("url, header, reason", [
    ("http://api.example.test/api/%zz", None, "bad-escape"),
    ("http://api.example.test/api/x", "Host: a.test, evil.example", "invalid-host"),
])
def test_explain_shows_other_refusals_before_routing(tmp_path, url, header, reason):
    out = json.loads(explain(tmp_path, "--json", *(["-H", header] if header else []), url).stdout)
    assert (out["route"], out["reason"], out["status"], out["body"]) == (None, reason, 400, f"400 {reason}\n")


@pytest.mark.parametrize("args", [["/relative"], ["-H", "no colon", "http://a.test/"]])
def test_explain_usage_errors(tmp_path, args):
    result = explain(tmp_path, *args)
    assert result.returncode not in (0, 2)
    assert result.stderr.startswith("coxp explain: ")


# --------------------------------------------------------------------------------------------
# dev


def test_dev_print_config_is_a_config_check_accepts(tmp_path):
    result = run_cli("dev", "--upstream", "http://127.0.0.1:4000", "--print-config")
    assert result.returncode == 0, result.stderr
    (tmp_path / "dev.toml").write_text(result.stdout)
    check = run_cli("check", "-c", "dev.toml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert len(check.stdout.splitlines()) == 2  # the dev route and default
    import tomllib

    data = tomllib.loads(result.stdout)
    cors = data["routes"][0]["cors"]
    assert cors["allow_origins"] == ["http://localhost:*", "http://127.0.0.1:*"]
    assert cors["allow_credentials"] is True and cors["allow_methods"] == ["*"] and cors["allow_headers"] == ["*"]
    assert cors.get("mode", "set") == "set"
    assert data["proxy"]["upstream"] == "http://127.0.0.1:4000"


def test_dev_allow_origin_and_listen_are_respected(tmp_path):
    result = run_cli("dev", "--upstream", "http://127.0.0.1:4000", "--listen", "127.0.0.1:9999",
                     "--allow-origin", ORIGIN, "--allow-origin", "http://localhost:5173", "--print-config")
    import tomllib

    data = tomllib.loads(result.stdout)
    assert data["routes"][0]["cors"]["allow_origins"] == [ORIGIN, "http://localhost:5173"]
    assert data["proxy"]["listen"] == "127.0.0.1:9999"


def test_dev_survives_sighup_it_has_no_file_to_reload(tmp_path, query_upstream):
    port = free_port()
    dev = Coxp(["-m", "proxy", "dev", "--upstream", query_upstream.url, "--listen", f"127.0.0.1:{port}"],
               cwd=tmp_path).start(ready=None)
    try:
        dev.wait_line(lambda line: "listening" in line)
        dev.process.send_signal(signal.SIGHUP)
        dev.wait_line(lambda line: "config_reload_skipped" in line)
        response = http_request(port, "GET", "/items", [("Origin", "http://localhost:5173")], host=f"127.0.0.1:{port}")
        assert response.status == 200
    finally:
        assert dev.stop() == 0


def test_dev_bad_origin_is_a_config_error():
    result = run_cli("dev", "--upstream", "http://127.0.0.1:4000", "--allow-origin", "https://a.test/x",
                     "--print-config")
    assert result.returncode == 2
    assert "--allow-origin" in result.stderr and result.stdout == ""


def test_dev_proxies_with_credentials(tmp_path, query_upstream):
    port = free_port()
    dev = Coxp(["-m", "proxy", "dev", "--upstream", query_upstream.url, "--listen", f"127.0.0.1:{port}"],
               cwd=tmp_path).start(ready=None)
    try:
        dev.wait_line(lambda line: "listening" in line)
        origin = "http://localhost:5173"
        response = http_request(port, "GET", "/items?h=Access-Control-Allow-Origin:*", [("Origin", origin),
                                ("Cookie", "sid=1")], host=f"127.0.0.1:{port}")
        assert response.status == 200 and response.body == b"upstream GET"
        assert response.policy == norm([("Access-Control-Allow-Origin", origin),
                                        ("Access-Control-Allow-Credentials", "true"), ("Vary", "Origin")])
        preflight = http_request(port, "OPTIONS", "/items", [
            ("Origin", "http://127.0.0.1:3000"), ("Access-Control-Request-Method", "PATCH"),
            ("Access-Control-Request-Headers", "Authorization, X-Any")], host=f"127.0.0.1:{port}")
        assert preflight.status == 204
        assert preflight.value("Access-Control-Allow-Origin") == "http://127.0.0.1:3000"
        assert preflight.value("Access-Control-Allow-Methods") == "PATCH"
        assert preflight.value("Access-Control-Allow-Headers") == "Authorization, X-Any"
        assert preflight.value("Access-Control-Allow-Credentials") == "true"
        denied = http_request(port, "GET", "/items", [("Origin", "https://evil.test")], host=f"127.0.0.1:{port}")
        assert denied.value("Access-Control-Allow-Origin") is None
        # the console log names the decisions
        dev.wait_line(lambda line: line.startswith("200 GET") and "https://evil.test" in line and " denied" in line)
    finally:
        assert dev.stop() == 0


# --------------------------------------------------------------------------------------------
# demo


def test_demo_starts_prints_urls_and_serves_through_the_proxy(tmp_path):
    port = free_port()
    demo = Coxp(["-m", "proxy", "demo", "--port", str(port)], cwd=tmp_path).start(ready=None)
    try:
        demo.wait_line(lambda line: "listening" in line)
        text = "\n".join(demo.lines)
        assert f"coxp        http://localhost:{port}" in text
        origin_port = int(re.search(r"open\s+http://localhost:(\d+)/", text).group(1))
        assert origin_port != port

        page = http_request(origin_port, "GET", "/", host=f"localhost:{origin_port}")
        assert page.status == 200 and b"<h1>coxp demo</h1>" in page.body
        assert f'"proxy": "http://localhost:{port}"'.encode() in page.body

        origin = f"http://localhost:{origin_port}"
        hello = http_request(port, "GET", "/api/hello", [("Origin", origin)], host=f"localhost:{port}")
        assert hello.status == 200 and json.loads(hello.body)["hello"] == "from the origin"
        assert hello.policy == norm([("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                                     ("Access-Control-Expose-Headers", "x-request-id")])
        preflight = http_request(port, "OPTIONS", "/api/echo", [("Origin", origin),
                                 ("Access-Control-Request-Method", "PUT"),
                                 ("Access-Control-Request-Headers", "content-type, x-demo")], host=f"localhost:{port}")
        assert preflight.status == 204
        assert preflight.value("Access-Control-Allow-Origin") == origin
        isolated = http_request(port, "GET", "/isolated/", host=f"localhost:{port}")
        assert isolated.value("Cross-Origin-Opener-Policy") == "same-origin"
        assert isolated.value("Cross-Origin-Embedder-Policy") == "require-corp"
        report_only = http_request(port, "GET", "/report-only/frame.html", host=f"localhost:{port}")
        assert report_only.value("Reporting-Endpoints") == 'demo="/.coxp/reports"'
        report = json.dumps([{"type": "coep", "url": f"http://localhost:{port}/report-only/frame.html", "body": {
            "type": "corp", "blockedURL": f"{origin}/logo.png", "disposition": "reporting"}}]).encode()
        delivered = http_request(port, "POST", "/.coxp/reports", [("Content-Type", "application/reports+json")],
                                 body=report, host=f"localhost:{port}")
        assert delivered.status == 204

        # The page reads coxp's decisions from the demo origin's /demo/log.
        log = json.loads(http_request(origin_port, "GET", "/demo/log?since=0", host=f"localhost:{origin_port}").body)
        assert [(d["method"], d["path"], d["route"], d["cors"]) for d in log["decisions"]][:2] == [
            ("GET", "/api/hello", "api", "allowed"), ("OPTIONS", "/api/echo", "api", "preflight-allowed")]
        # ... and the reports coxp's collector logged.
        assert [(r["type"], r["blocked_url"], r["disposition"]) for r in log["reports"]] == [
            ("coep", f"{origin}/logo.png", "reporting")]
    finally:
        assert demo.stop() == 0


def test_demo_next_step_command_works_as_printed(tmp_path):
    demo = Coxp(["-m", "proxy", "demo", "--port", "0"], cwd=tmp_path).start(ready=None)
    try:
        demo.wait_line(lambda line: "listening" in line)
        text = "\n".join(demo.lines)
        lines = demo.lines[next(i for i, line in enumerate(demo.lines) if " explain " in line):]
        command = "\n".join(lines[:next(i for i, line in enumerate(lines) if line.endswith("/api/echo")) + 1])
        origin_port = re.search(r"open\s+http://localhost:(\d+)/", text).group(1)
        assert f"'Origin: http://localhost:{origin_port}'" in command  # the page's real origin
        # A shell without the venv on PATH: the printed command names coxp by its full path.
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=WAIT,
                                env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "route:          api" in result.stdout and "preflight" in result.stdout
    finally:
        assert demo.stop() == 0


def test_demo_port_0_picks_a_free_port_and_prints_it(tmp_path):
    demo = Coxp(["-m", "proxy", "demo", "--port", "0"], cwd=tmp_path).start(ready=None)
    try:
        line = demo.wait_line(lambda line: "listening" in line)
        port = int(re.search(r"listen=localhost:(\d+)", line).group(1))
        assert port != 0
        assert any(f"coxp        http://localhost:{port}" in line for line in demo.lines)
        hello = http_request(port, "GET", "/api/hello", host=f"localhost:{port}")
        assert hello.status == 200
        # The demo origin's own endpoints refuse bad input instead of failing.
        origin_port = int(re.search(r"open\s+http://localhost:(\d+)/", "\n".join(demo.lines)).group(1))
        assert http_request(origin_port, "GET", "/demo/log?since=x", host=f"localhost:{origin_port}").status == 400
        for body, status in ((b"{not json", 400), (b"[" + b"0," * 40_000 + b"0]", 413)):
            result = http_request(port, "POST", "/isolated/result", [("Content-Type", "application/json")],
                                  body=body, host=f"localhost:{port}")
            assert result.status == status
        log = json.loads(http_request(origin_port, "GET", "/demo/log?since=0", host=f"localhost:{origin_port}").body)
        assert log["isolation"] == []
    finally:
        assert demo.stop() == 0


def test_demo_config_ships_in_the_package_identical_to_config_dir():
    repo = Path(__file__).resolve().parents[1]
    assert (repo / "proxy" / "demo.toml").read_bytes() == (repo / "config" / "demo.toml").read_bytes()


def test_demo_port_in_use_is_a_clean_error(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_cli("demo", "--port", str(busy.getsockname()[1]), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("coxp demo: ")
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------
# python -m proxy, the console script, run's flags


def test_python_dash_m_proxy_and_console_script():
    result = subprocess.run([PYTHON, "-m", "proxy", "--version"], capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0 and result.stdout.startswith("coxp ")
    script = Path(PYTHON).parent / "coxp"
    if script.exists():
        result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=WAIT)
        assert result.returncode == 0 and result.stdout.startswith("coxp ")
    result = subprocess.run([PYTHON, "-m", "proxy"], capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2 and "usage" in result.stderr


RUN_FILE = """
[proxy]
listen = "127.0.0.1:{busy}"
upstream = "http://127.0.0.1:1"
[log]
format = "json"
level = "info"
[[routes]]
name = "api"
[routes.cors]
allow_origins = ["https://app.example.test"]
"""


def test_run_flags_override_the_file(tmp_path, query_upstream, coxp):
    import socket

    with socket.socket() as busy:  # the file's listen address is taken: only --listen can work
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        text = RUN_FILE.replace("{busy}", str(busy.getsockname()[1]))
        proxy = coxp(text, "--listen", "127.0.0.1:0", "--upstream", query_upstream.url,
                          "--log-format", "console", ready=None)
        line = proxy.wait_line(lambda line: "listening" in line)
        with pytest.raises(ValueError):
            json.loads(line)
        port = int(re.search(r"listen=127\.0\.0\.1:(\d+)", line).group(1))
        response = http_request(port, "GET", "/x", [("Origin", ORIGIN)], host=f"127.0.0.1:{port}")
        assert response.status == 200 and response.body == b"upstream GET"  # --upstream took effect
        assert response.value("Access-Control-Allow-Origin") == ORIGIN
        proxy.wait_line(lambda line: line.startswith("200 GET") and f"127.0.0.1:{port}/x" in line)
        assert proxy.stop() == 0


def wait_accepting(port: int) -> None:
    """Bounded wait for a listener whose readiness is not logged (no event to await here)."""
    import socket
    import time

    deadline = time.monotonic() + WAIT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.05)


def test_run_log_level_flag_filters_events(tmp_path, coxp):
    """--log-level warning: `request` and `listening` (info) are not logged, `upstream_error`
    (warning) is; the file says info."""
    port = free_port()
    proxy = coxp(RUN_FILE.replace("{busy}", "0"), "--listen", f"127.0.0.1:{port}", "--log-level", "warning",
                      ready=None)
    wait_accepting(port)
    response = http_request(port, "GET", "/x", [("Origin", ORIGIN)], host=f"127.0.0.1:{port}")
    assert response.status == 502  # the file's upstream, 127.0.0.1:1, refuses
    proxy.wait_event("upstream_error")
    assert proxy.stop() == 0
    assert [e["event"] for e in proxy.events] == ["upstream_error"]
    assert proxy.events[0]["level"] == "warning"


def test_run_flag_values_are_case_insensitive(tmp_path):
    result = run_cli("run", "-c", write(tmp_path, "bad.toml", "[proxy]\nlisten = 1\n"), "--log-level", "INFO",
                     "--log-format", "JSON", cwd=tmp_path)
    assert result.returncode == 2  # got past argument parsing to the config error
    assert result.stderr.startswith("bad.toml: proxy.listen: ")


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "config").glob("*.toml")))
def test_explain_runs_on_every_example_config(name):
    path = str(Path(__file__).resolve().parents[1] / "config" / name)
    preflight = run_cli("explain", "-c", path, "--json", "-X", "OPTIONS", "-H", "Origin: http://localhost:3000",
                        "-H", "Access-Control-Request-Method: PUT", "http://localhost:8080/api/items")
    assert preflight.returncode == 0, preflight.stderr
    out = json.loads(preflight.stdout)
    assert out["cors"] in ("preflight-allowed", "preflight-denied", "off")
    if out["cors"] != "off" and out["answered_by_proxy"]:
        assert out["status"] in (204, 403) and out["body"] is not None
    readable = run_cli("explain", "-c", path, "-H", "Origin: http://localhost:3000", "http://localhost:8080/")
    assert readable.returncode == 0 and readable.stdout.startswith("request:")


def test_explain_contacts_nothing(tmp_path, query_upstream):
    from harness import unique

    marker = unique()
    name = write(tmp_path, "live.toml", EXPLAIN.replace("http://127.0.0.1:3000", query_upstream.url))
    for method in ("GET", "POST", "OPTIONS"):
        result = run_cli("explain", "-c", name, "-X", method, "-H", f"Origin: {ORIGIN}",
                         f"http://api.example.test/api/{marker}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert query_upstream.saw(marker) == []
