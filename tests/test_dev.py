"""`coxp dev` (proxy/dev.py, proxy/listeners.py): localhost on both loopback stacks, the start-up
banner, --expose-header, --isolate, flag errors that name the flag, and config/local-dev.toml.

Every command runs as a real subprocess; serving ones are stopped with SIGTERM at teardown.
"""
from __future__ import annotations

import os
import socket
import subprocess
import tomllib

import pytest

from harness import PYTHON, REPO, WAIT, Coxp, free_port, request_bytes, run_cli, send

APP = "http://localhost:5173"


@pytest.fixture
def dev(tmp_path):
    """Factory: `dev(*flags)` starts `coxp dev --listen localhost:0 --log-format json FLAGS`."""
    started: list[Coxp] = []

    def start(*flags: str) -> Coxp:
        argv = ["-m", "proxy", "dev", "--listen", "localhost:0", "--log-format", "json", *flags]
        started.append(Coxp(argv, cwd=tmp_path).start())
        return started[-1]

    yield start
    for process in started:
        assert process.stop() == 0


def call(proxy: Coxp, method: str, target: str, headers=(), address: str = "127.0.0.1"):
    host = f"localhost:{proxy.port}"
    return send((address, proxy.port), request_bytes(method, target, list(headers), b"", host), method)


def loopback_addresses() -> list[str]:
    """The addresses a browser may try for `localhost`: both stacks where this host has IPv6."""
    found = ["127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        found.append("::1")
    except OSError:
        pass
    return found


# --------------------------------------------------------------------------------------------
# the config it runs


def test_local_dev_toml_is_exactly_what_print_config_prints():
    result = run_cli("dev", "--upstream", "http://127.0.0.1:3000", "--print-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == (REPO / "config" / "local-dev.toml").read_bytes()


def test_print_config_defaults_localhost_8080_and_no_exposed_headers_and_no_isolation():
    data = tomllib.loads(run_cli("dev", "--upstream", "http://127.0.0.1:3000", "--print-config").stdout)
    assert data["proxy"]["listen"] == "localhost:8080"
    assert data["routes"][0]["cors"]["expose_headers"] == []
    assert "coop" not in data["routes"][0] and "coep" not in data["routes"][0]
    assert data["log"]["format"] == "console"


def test_print_config_names_the_command_that_wrote_it_and_check_accepts_it(tmp_path):
    flags = ["--upstream", "http://127.0.0.1:4000", "--listen", "127.0.0.1:9999", "--allow-origin", APP,
             "--expose-header", "X-Request-Id", "--expose-header", "ETag", "--isolate", "--log-format", "json"]
    result = run_cli("dev", *flags, "--print-config")
    assert result.returncode == 0, result.stderr
    assert "#   coxp dev " + " ".join(flags) + " --print-config\n" in result.stdout
    data = tomllib.loads(result.stdout)
    route = data["routes"][0]
    assert route["cors"]["allow_origins"] == [APP]
    assert route["cors"]["expose_headers"] == ["X-Request-Id", "ETag"]
    assert (route["coop"]["policy"], route["coep"]["policy"]) == ("same-origin", "require-corp")
    assert data["log"]["format"] == "json"
    (tmp_path / "dev.toml").write_text(result.stdout)
    check = run_cli("check", "-c", "dev.toml", cwd=tmp_path)
    assert (check.returncode, check.stderr) == (0, "")


# --------------------------------------------------------------------------------------------
# flags: help and errors


def test_help_describes_every_option_of_every_command():
    from proxy.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert {"run", "check", "explain", "dev", "init", "demo"} <= set(commands)
    for name in commands:
        for action in commands[name]._actions:
            assert action.help, f"coxp {name} {action.option_strings or action.dest} has no description"
    result = run_cli("dev", "--help")
    assert result.returncode == 0
    for flag in ("--upstream", "--listen", "--allow-origin", "--expose-header", "--isolate", "--log-format",
                 "--print-config"):
        assert flag in result.stdout
    assert "localhost:8080" in result.stdout


@pytest.mark.parametrize(("flags", "named"), [
    (["--allow-origin", "https://a.test/x"], '--allow-origin: "https://a.test/x" has a path'),
    (["--allow-origin", APP, "--allow-origin", "https://*.com"], '--allow-origin: "https://*.com"'),
    (["--expose-header", "x y"], "--expose-header"),
    (["--listen", "nowhere"], '--listen: "nowhere" is not HOST:PORT'),
], ids=["origin-path", "second-origin", "header-name", "listen"])
def test_flag_mistakes_name_the_flag_not_a_key_path(flags, named):
    result = run_cli("dev", "--upstream", "http://127.0.0.1:4000", *flags, "--print-config")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("coxp dev: ") and named in result.stderr, result.stderr
    assert "routes[" not in result.stderr and "allow_origins" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_upstream_mistake_names_the_flag():
    result = run_cli("dev", "--upstream", "ftp://127.0.0.1:4000", "--print-config")
    assert result.returncode == 2
    assert result.stderr.startswith('coxp dev: --upstream: "ftp://127.0.0.1:4000"'), result.stderr


# --------------------------------------------------------------------------------------------
# serving


def test_listens_on_localhost_on_every_loopback_stack_with_one_port(dev, query_upstream):
    proxy = dev("--upstream", query_upstream.url)
    assert proxy.listen.startswith("localhost:")
    for address in loopback_addresses():
        response = call(proxy, "GET", "/items", [("Origin", APP)], address=address)
        assert response.status == 200, address
        assert response.value("Access-Control-Allow-Origin") == APP


def test_banner_on_stderr_before_the_first_log_line(tmp_path, query_upstream):
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, "-m", "proxy", "dev", "--upstream", query_upstream.url, "--listen", f"localhost:{port}",
         "--allow-origin", APP, "--log-format", "json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True,
    )
    try:
        seen: list[str] = []
        for line in process.stdout:
            seen.append(line)
            if '"listening"' in line:
                break
        banner = "".join(seen[:-1])
        assert f"http://localhost:{port}" in banner
        assert query_upstream.url in banner and APP in banner
        assert "localhost and 127.0.0.1 are different sites" in banner
        assert "--print-config" in banner
        assert '"listening"' in seen[-1]
    finally:
        process.terminate()
        assert process.wait(WAIT) == 0


def test_expose_header_replaces_the_upstreams_own_list(dev, query_upstream):
    proxy = dev("--upstream", query_upstream.url, "--expose-header", "X-Request-Id", "--expose-header", "ETag")
    response = call(proxy, "GET", "/items?h=Access-Control-Expose-Headers:X-Secret&h=X-Request-Id:42",
                    [("Origin", APP)])
    assert response.values("Access-Control-Expose-Headers") == ["x-request-id, etag"]
    without = dev("--upstream", query_upstream.url)
    response = call(without, "GET", "/items?h=Access-Control-Expose-Headers:X-Secret", [("Origin", APP)])
    assert response.value("Access-Control-Expose-Headers") is None


def test_isolate_sets_coop_and_coep_on_forwarded_and_proxy_made_responses(dev, query_upstream):
    proxy = dev("--upstream", query_upstream.url, "--isolate")
    forwarded = call(proxy, "GET", "/page?h=Cross-Origin-Embedder-Policy:unsafe-none")
    preflight = call(proxy, "OPTIONS", "/items", [("Origin", APP), ("Access-Control-Request-Method", "PUT")])
    assert preflight.status == 204
    unreachable = dev("--upstream", f"http://127.0.0.1:{free_port()}", "--isolate")
    failed = call(unreachable, "GET", "/page")
    assert failed.status == 502
    for response in (forwarded, preflight, failed):
        assert response.values("Cross-Origin-Opener-Policy") == ["same-origin"]
        assert response.values("Cross-Origin-Embedder-Policy") == ["require-corp"]
    plain = dev("--upstream", query_upstream.url)
    assert call(plain, "GET", "/page").value("Cross-Origin-Embedder-Policy") is None


def test_bind_listeners_gives_every_address_the_same_free_port(monkeypatch):
    from proxy import listeners
    from proxy.model import Endpoint

    if "::1" not in loopback_addresses():
        pytest.skip("no IPv6 loopback on this host")
    sockets = listeners.bind_listeners(Endpoint("localhost", 0))
    try:
        bound = {(s.family, s.getsockname()[0], s.getsockname()[1]) for s in sockets}
        assert {(f, a) for f, a, _ in bound} == {(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")}
        assert len({p for _, _, p in bound}) == 1
    finally:
        for s in sockets:
            s.close()


def test_port_in_use_is_a_one_line_error_naming_the_address():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("dev", "--upstream", "http://127.0.0.1:4000", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"coxp dev: [Errno 98] cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_listen_host_is_a_one_line_error():
    result = run_cli("dev", "--upstream", "http://127.0.0.1:4000", "--listen", "no-such-host.invalid:0")
    assert result.returncode == 1
    assert "cannot listen on no-such-host.invalid" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("flags", "named"), [
    (["--expose-header", "set-cookie"], '--expose-header: "set-cookie" can never be exposed'),
    (["--upstream", "http://127.0.0.1:4000/api"], '--upstream: "http://127.0.0.1:4000/api" has a path'),
], ids=["forbidden-exposed-header", "upstream-path"])
def test_more_flag_mistakes_name_their_flag(flags, named):
    result = run_cli("dev", "--upstream", "http://127.0.0.1:4000", *flags, "--print-config")
    assert result.returncode == 2 and named in result.stderr, result.stderr


def test_a_warning_about_a_flag_names_the_flag(dev, query_upstream):
    proxy = dev("--upstream", query_upstream.url, "--allow-origin", "https://*.github.io")
    assert 'warning: coxp dev: --allow-origin: "https://*.github.io"' in proxy.stderr
    assert "routes[0]" not in proxy.stderr


def test_a_fixed_port_taken_on_one_loopback_stack_is_a_clean_error():
    """localhost:PORT binds ::1 and 127.0.0.1; when one of them is taken, nothing is half-bound."""
    if "::1" not in loopback_addresses():
        pytest.skip("no IPv6 loopback on this host")
    with socket.socket(socket.AF_INET6) as busy:
        busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        busy.bind(("::1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("dev", "--upstream", "http://127.0.0.1:4000", "--listen", f"localhost:{port}")
        assert result.returncode == 1
        assert f"[::1]:{port}" in result.stderr and "Traceback" not in result.stderr
        with socket.socket() as probe:  # the IPv4 half was released again
            probe.bind(("127.0.0.1", port))
