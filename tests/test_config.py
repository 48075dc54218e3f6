"""proxy.config: loading, validation (every problem, under its key path), compilation, summary."""
from __future__ import annotations

import ipaddress
import json
import pathlib
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import cors as cors_module
from proxy.config import load_config, load_config_text, summarize
from proxy.config import policies as policies_module
from proxy.config import sections as sections_module
from proxy.errors import ConfigError
from proxy.model import Limits

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "config").glob("*.toml"))
UPSTREAM = '[proxy]\nupstream = "http://127.0.0.1:3000"\n'


def load(text: str, **kwargs):
    return load_config_text(textwrap.dedent(text), source="c.toml", **kwargs)


def problems(text: str, **kwargs) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load(text, **kwargs)
    return [(p.key, p.message) for p in caught.value.problems]


def route(body: str) -> str:
    """A config with one route `r` whose body (tables included) is `body`."""
    return UPSTREAM + '[[routes]]\nname = "r"\n' + textwrap.dedent(body)


def cors(body: str) -> str:
    return route("[routes.cors]\n" + textwrap.dedent(body))


# --------------------------------------------------------------------------------------------
# The shipped examples


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_without_warnings(path):
    config = load_config(str(path))
    assert config.warnings == ()
    assert len(summarize(config)) == len(config.routes) + 1


def test_examples_are_all_there():
    names = {p.name for p in EXAMPLES}
    assert {"local-dev.toml", "legacy-api.toml", "staging-hardening.toml", "demo.toml"} <= names


def test_packaged_demo_config_is_identical_to_the_example():
    assert (REPO / "proxy" / "demo.toml").read_bytes() == (REPO / "config" / "demo.toml").read_bytes()


def test_demo_config_has_the_documented_routes():
    config = load_config(str(REPO / "config" / "demo.toml"))
    by_name = {r.name: r for r in config.routes}
    assert by_name["api"].paths == ("/api/*",)
    assert by_name["api"].policies.cors.origins.matches("http://localhost:5173")
    assert by_name["api"].policies.cors.origins.matches("http://127.0.0.1:9")
    assert by_name["isolated"].policies.header_policy("coop").headers == (("Cross-Origin-Opener-Policy", "same-origin"),)
    assert by_name["isolated"].policies.header_policy("coep").headers == (("Cross-Origin-Embedder-Policy", "require-corp"),)
    assert by_name["assets"].policies.header_policy("corp").headers == (("Cross-Origin-Resource-Policy", "cross-origin"),)


# --------------------------------------------------------------------------------------------
# Bad configs: one problem each, with its exact key path and a fragment of its message

BAD = [
    # file structure and unknown keys
    ("[prxy]\n" + UPSTREAM, "prxy", 'did you mean "proxy"'),
    (UPSTREAM + 'listne = "127.0.0.1:1"\n', "proxy.listne", 'did you mean "listen"'),
    ("routes = 5\n" + UPSTREAM, "routes", "expected an array of tables"),
    (UPSTREAM + "[defaults.csp]\npolicy = 1\n", "defaults.csp", "unknown key"),
    (cors('allow_origin = ["https://a.test"]\nallow_origins = ["https://a.test"]\n'), "routes[0].cors.allow_origin", 'did you mean "allow_origins"'),
    # [proxy]
    (UPSTREAM + 'listen = "8080"\n', "proxy.listen", "is not HOST:PORT"),
    (UPSTREAM + 'listen = "127.0.0.1:70000"\n', "proxy.listen", "between 0 and 65535"),
    (UPSTREAM + 'listen = "[::zz]:80"\n', "proxy.listen", "not an IPv6 address"),
    ('[proxy]\nupstream = "http://127.0.0.1:3000/app"\n', "proxy.upstream", "has a path"),
    ('[proxy]\nupstream = "http://127.0.0.1:3000?x=1"\n', "proxy.upstream", "has a query"),
    ('[proxy]\nupstream = "ftp://files.test"\n', "proxy.upstream", "http:// or https://"),
    ('[proxy]\nupstream = "http://user:pw@a.test"\n', "proxy.upstream", "has userinfo"),
    ('[proxy]\nupstream = "http://a.test:0"\n', "proxy.upstream", "between 1 and 65535"),
    ('[proxy]\nupstream = "127.0.0.1:3000"\n', "proxy.upstream", "is not a URL"),
    ("[proxy]\nupstream = 3000\n", "proxy.upstream", "expected a string, got an integer (3000)"),
    (UPSTREAM + "workers = 0\n", "proxy.workers", "at least 1"),
    (UPSTREAM + 'workers = "2"\n', "proxy.workers", 'expected an integer, got a string ("2")'),
    (UPSTREAM + "preserve_host = 1\n", "proxy.preserve_host", "expected a boolean"),
    (UPSTREAM + "connect_timeout = 0\n", "proxy.connect_timeout", "not a positive number of seconds"),
    (UPSTREAM + "read_timeout = inf\n", "proxy.read_timeout", "not a positive number of seconds"),
    (UPSTREAM + 'trusted_proxies = ["10.0.0.1/8"]\n', "proxy.trusted_proxies[0]", 'write "10.0.0.0/8"'),
    (UPSTREAM + 'trusted_proxies = ["lb.internal"]\n', "proxy.trusted_proxies[0]", "not an IP address or CIDR"),
    (UPSTREAM + f'tls_cert = "{REPO / "pyproject.toml"}"\n', "proxy.tls_key", "go together"),
    (UPSTREAM + 'upstream_ca = "/nonexistent/ca.pem"\n', "proxy.upstream_ca", "no such file"),
    ("[[routes]]\nname = \"r\"\n", "proxy.upstream", 'routes "r" have no upstream'),
    ("", "proxy.upstream", "missing"),
    # [admin], [log], [limits]
    (UPSTREAM + '[admin]\nlisten = "localhost"\n', "admin.listen", "is not HOST:PORT"),
    (UPSTREAM + 'listen = "127.0.0.1:9000"\n[admin]\nlisten = "127.0.0.1:9000"\n', "admin.listen", "give the admin listener another port"),
    (UPSTREAM + '[log]\nlevel = "verbose"\n', "log.level", "is not one of: debug, info"),
    (UPSTREAM + '[log]\nformat = "text"\n', "log.format", "json, console"),
    (UPSTREAM + "[limits]\nmax_headers = -1\n", "limits.max_headers", "at least 1"),
    (UPSTREAM + "[limits]\nmax_body_bytes = true\n", "limits.max_body_bytes", "expected an integer, got a boolean"),
    (UPSTREAM + "[limits]\nheader_timeout = -2.5\n", "limits.header_timeout", "positive number of seconds"),
    (UPSTREAM + "[limits]\nrequest_buffer = -1\n", "limits.request_buffer", "at least 0"),
    # routes
    (UPSTREAM + '[[routes]]\npaths = ["/"]\n', "routes[0].name", "missing"),
    (UPSTREAM + '[[routes]]\nname = "a"\n[[routes]]\nname = "a"\n', "routes[1].name", "already the name of routes[0]"),
    (UPSTREAM + '[[routes]]\nname = "default"\n', "routes[0].name", "implicit route"),
    (UPSTREAM + '[[routes]]\nname = "has space"\n', "routes[0].name", "without spaces"),
    (route('hosts = ["*"]\n'), "routes[0].hosts[0]", "omit hosts"),
    (route('hosts = ["a.*.test"]\n'), "routes[0].hosts[0]", 'only a leading "*."'),
    (route('hosts = ["api.test:8080"]\n'), "routes[0].hosts[0]", "has a port"),
    (route("hosts = []\n"), "routes[0].hosts", "empty list matches nothing"),
    (route('paths = ["api/*"]\n'), "routes[0].paths[0]", 'does not start with "/"'),
    (route('paths = ["/search?q=*"]\n'), "routes[0].paths[0]", "without the query"),
    (route('paths = ["/a b"]\n'), "routes[0].paths[0]", "percent-encoded"),
    (route('methods = ["GET POST"]\n'), "routes[0].methods[0]", "is not a method"),
    (route('methods = ["*"]\n'), "routes[0].methods[0]", "omit methods"),
    (route('upstream = "http://a.test/x"\n'), "routes[0].upstream", "has a path"),
    # CORS
    (cors('mode = "on"\nallow_origins = ["https://a.test"]\n'), "routes[0].cors.mode", "set, default, remove, pass"),
    (cors("allow_credentials = true\n"), "routes[0].cors.allow_origins", "allows no origin"),
    (cors('allow_origins = ["*"]\nallow_credentials = true\n'), "routes[0].cors.allow_origins[0]", "allow_credentials = true"),
    (cors('allow_origins = ["https://a.test", "*"]\n'), "routes[0].cors.allow_origins[1]", "must be the only entry"),
    (cors('allow_origins = ["https://a.test/"]\n'), "routes[0].cors.allow_origins[0]", "has a path"),
    (cors('allow_origins = ["https://*.com"]\n'), "routes[0].cors.allow_origins[0]", "public suffix"),
    (cors('allow_origins = "https://a.test"\n'), "routes[0].cors.allow_origins", "expected an array of strings"),
    (cors("allow_origins = [1]\n"), "routes[0].cors.allow_origins[0]", "expected a string, got an integer"),
    (cors('allow_origins = ["https://a.test"]\nallow_origin_regex = ["("]\n'), "routes[0].cors.allow_origin_regex[0]", "invalid regular expression"),
    (cors('allow_origins = ["https://a.test"]\nallow_methods = ["PUT", "trace"]\n'), "routes[0].cors.allow_methods[1]", "forbidden method"),
    (cors('allow_origins = ["https://a.test"]\nallow_methods = ["CONNECT"]\n'), "routes[0].cors.allow_methods[0]", "forbidden method"),
    (cors('allow_origins = ["https://a.test"]\nallow_methods = ["PUT", "*"]\n'), "routes[0].cors.allow_methods[1]", 'write allow_methods = ["*"] alone'),
    (cors('allow_origins = ["https://a.test"]\nallow_methods = ["GET, PUT"]\n'), "routes[0].cors.allow_methods[0]", "is not a method"),
    (cors('allow_origins = ["https://a.test"]\nallow_headers = ["X Y"]\n'), "routes[0].cors.allow_headers[0]", "is not a header name"),
    (cors('allow_origins = ["https://a.test"]\nexpose_headers = ["Set-Cookie"]\n'), "routes[0].cors.expose_headers[0]", "can never be exposed"),
    (cors('allow_origins = ["https://a.test"]\nexpose_headers = ["set-cookie2"]\n'), "routes[0].cors.expose_headers[0]", "can never be exposed"),
    (cors('allow_origins = ["https://a.test"]\nexpose_headers = ["*"]\nallow_credentials = true\n'), "routes[0].cors.expose_headers", "list the header names"),
    (cors('allow_origins = ["https://a.test"]\nmax_age = 86401\n'), "routes[0].cors.max_age", "between 0 and 86400"),
    (cors('allow_origins = ["https://a.test"]\nmax_age = -1\n'), "routes[0].cors.max_age", "between 0 and 86400"),
    (cors('allow_origins = ["https://a.test"]\nmax_age = true\n'), "routes[0].cors.max_age", "expected an integer, got a boolean"),
    (cors('allow_origins = ["https://a.test"]\nmax_age = 1.5\n'), "routes[0].cors.max_age", "expected an integer, got a float"),
    (cors('allow_origins = ["https://a.test"]\npreflight = "browser"\n'), "routes[0].cors.preflight", "proxy, upstream"),
    (cors('allow_origins = ["https://a.test"]\nallow_credentials = "yes"\n'), "routes[0].cors.allow_credentials", "expected a boolean"),
    (UPSTREAM + '[defaults.cors]\nallow_origins = ["a.test"]\n', "defaults.cors.allow_origins[0]", "has no scheme"),
    # CORP, COOP, COEP, Reporting
    (route('[routes.corp]\npolicy = "none"\n'), "routes[0].corp.policy", "same-origin, same-site, cross-origin"),
    (route("[routes.coop]\nreport_only = true\n"), "routes[0].coop.policy", 'missing; write policy = "same-origin"'),
    (route('[routes.coop]\npolicy = "same-origin-allow-popup"\n'), "routes[0].coop.policy", "is not one of"),
    (route('[routes.coep]\npolicy = "require-corp"\nreport_to = "Bad Name"\n'), "routes[0].coep.report_to", "is not an endpoint name"),
    (route('[routes.coep]\npolicy = "require-corp"\nreport_only = "yes"\n'), "routes[0].coep.report_only", "expected a boolean"),
    (route("[routes.reporting]\nendpoints = {}\n"), "routes[0].reporting.endpoints", "empty table"),
    (route("[routes.reporting]\n"), "routes[0].reporting.endpoints", "missing"),
    (route('[routes.reporting]\nendpoints = { default = "reports/r" }\n'), "routes[0].reporting.endpoints.default", "nor a path"),
    (route('[routes.reporting]\nendpoints = { Main = "https://r.test/" }\n'), "routes[0].reporting.endpoints.Main", "is not an endpoint name"),
    (route("[routes.reporting]\nendpoints = { default = 1 }\n"), "routes[0].reporting.endpoints.default", "expected a URL string"),
    (route('[routes.corp]\nmode = "sett"\npolicy = "same-site"\n'), "routes[0].corp.mode", "is not one of"),
]


@pytest.mark.parametrize("text,key,fragment", BAD, ids=[f"{i}:{case[1]}" for i, case in enumerate(BAD)])
def test_bad_config_is_reported_under_its_key(text, key, fragment):
    found = problems(text)
    assert [k for k, _ in found] == [key], found
    assert fragment in found[0][1], found


def test_an_origin_with_a_path_is_reported_under_its_key_path():
    text = cors('allow_origins = ["https://ok.test"]\n') + '[[routes]]\nname = "s"\n[routes.cors]\nallow_origins = ["https://a.test/"]\n'
    with pytest.raises(ConfigError) as caught:
        load(text)
    (line,) = caught.value.lines()
    assert line.startswith('c.toml: routes[1].cors.allow_origins[0]: "https://a.test/" has a path')


def test_every_problem_is_reported_at_once():
    text = """
        [proxy]
        listen = "nowhere"
        workers = 0
        [log]
        level = "loud"
        [[routes]]
        name = "a"
        paths = ["api"]
        [routes.cors]
        allow_origins = ["*"]
        allow_credentials = true
        max_age = 100000
        [[routes]]
        [routes.coop]
        policy = "open"
    """
    keys = [key for key, _ in problems(text)]
    assert keys == [
        "proxy.listen",
        "proxy.workers",
        "log.level",
        "routes[0].paths[0]",
        "routes[0].cors.allow_origins[0]",
        "routes[0].cors.max_age",
        "routes[1].name",
        "routes[1].coop.policy",
        "proxy.upstream",
    ]


def test_toml_syntax_error_names_line_and_column():
    ((key, message),) = problems('[proxy]\nupstream = "http://a.test"\nlisten = 127.0.0.1:80\n')
    assert key == ""
    assert "invalid TOML" in message and "line 3" in message and "column" in message


def test_toml_syntax_error_at_end_of_document_still_names_line_and_column():
    ((_, message),) = problems('[proxy]\nupstream = "http://a.test\n')
    assert "line" in message and "column" in message


def test_missing_file_is_one_clear_problem(tmp_path):
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines() == [f"{path}: no such file; give the path of a TOML config with -c"]


def test_non_utf8_file_is_reported(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'# caf\xe9\n[proxy]\nupstream = "http://a.test"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "not UTF-8" in caught.value.lines()[0]


def test_error_lines_name_the_file_as_given(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[proxy]\nworkers = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert f"{path}: proxy.workers: 0 is out of range; write an integer at least 1" in caught.value.lines()


# --------------------------------------------------------------------------------------------
# Extension tables, overrides, defaults


def test_x_tables_and_keys_are_ignored_at_any_level():
    config = load(cors('allow_origins = ["https://a.test"]\n[routes.cors.x-audit]\nowner = 1\n') + "[x-team]\nslack = '#web'\n")
    assert config.routes[0].policies.cors is not None


def test_defaults_of_every_setting():
    config = load(UPSTREAM)
    proxy = config.proxy
    assert (str(proxy.listen), proxy.workers, proxy.preserve_host, proxy.forwarded_headers) == ("127.0.0.1:8080", 1, False, True)
    assert (proxy.trusted_proxies, proxy.connect_timeout, proxy.read_timeout) == ((), 5.0, 60.0)
    assert (proxy.tls_cert, proxy.tls_key, proxy.upstream_ca, proxy.upstream_verify) == (None, None, None, True)
    assert config.admin is None
    assert (config.log.level, config.log.format) == ("info", "json")
    assert config.limits == Limits()
    assert config.routes == ()
    assert config.default_route.name == "default"
    assert config.default_route.upstream.url == "http://127.0.0.1:3000"


def test_overrides_replace_file_values_and_are_validated():
    config = load(UPSTREAM + '[log]\nformat = "json"\nlevel = "INFO"\n',
                  overrides={"proxy": {"listen": "[::1]:0", "upstream": None}, "log": {"format": "console"}})
    assert (config.proxy.listen.host, config.proxy.listen.port) == ("::1", 0)
    assert config.proxy.upstream.url == "http://127.0.0.1:3000"  # None means "not given"
    assert (config.log.format, config.log.level) == ("console", "info")
    assert problems(UPSTREAM, overrides={"proxy": {"upstream": "http://a.test/x"}})[0][0] == "proxy.upstream"


def test_overrides_can_supply_the_missing_upstream():
    config = load('[[routes]]\nname = "r"\n', overrides={"proxy": {"upstream": "https://A.test:443/"}})
    assert config.default_route.upstream.url == "https://a.test"


def test_upstream_not_required_when_every_route_has_one():
    config = load('[[routes]]\nname = "r"\nupstream = "http://127.0.0.1:4000"\n')
    assert config.proxy.upstream is None
    assert config.default_route.upstream is None
    assert summarize(config)[-1].split()[4] == "upstream=none"


def test_routes_inherit_missing_tables_from_defaults_and_default_route_is_defaults():
    config = load(UPSTREAM + """
        [defaults.coop]
        policy = "same-origin"
        [defaults.cors]
        allow_origins = ["https://a.test"]
        [[routes]]
        name = "inherits"
        [[routes]]
        name = "own"
        [routes.coop]
        policy = "unsafe-none"
        [[routes]]
        name = "opted-out"
        [routes.coop]
        mode = "pass"
        [routes.cors]
        mode = "remove"
    """)
    inherits, own, opted_out = config.routes
    defaults = config.default_route.policies
    assert inherits.policies.header_policy("coop") is defaults.header_policy("coop") and inherits.policies.cors is defaults.cors
    assert own.policies.header_policy("coop").headers == (("Cross-Origin-Opener-Policy", "unsafe-none"),)
    assert own.policies.cors is defaults.cors
    assert (opted_out.policies.header_policy("coop").mode, opted_out.policies.header_policy("coop").headers) == ("pass", ())
    assert opted_out.policies.cors.mode == "remove"
    assert config.effective["routes"][0]["coop"] == {"mode": "set", "policy": "same-origin", "report_to": None, "report_only": False}
    json.dumps(config.effective)  # the admin /config view is plain JSON


def test_remove_and_pass_tables_need_no_policy_keys():
    text = route("""
        [routes.cors]
        mode = "pass"
        [routes.corp]
        mode = "remove"
        [routes.coop]
        mode = "remove"
        [routes.coep]
        mode = "pass"
        [routes.reporting]
        mode = "remove"
    """)
    policies = load(text).routes[0].policies
    assert policies.cors.mode == "pass"
    assert policies.header_policy("corp").owned == frozenset({"cross-origin-resource-policy"})
    assert policies.header_policy("reporting").owned == frozenset({"reporting-endpoints"})
    assert [p.headers for p in policies.header_policies] == [(), (), (), ()]


# --------------------------------------------------------------------------------------------
# Compiled values


@pytest.mark.parametrize("text,url,host,port,host_header", [
    ("http://127.0.0.1:3000", "http://127.0.0.1:3000", "127.0.0.1", 3000, "127.0.0.1:3000"),
    ("HTTP://Api.Example.Test:80", "http://api.example.test", "api.example.test", 80, "api.example.test"),
    ("https://a.test:443/", "https://a.test", "a.test", 443, "a.test"),
    ("https://a.test:8443", "https://a.test:8443", "a.test", 8443, "a.test:8443"),
    ("http://[::1]:4000", "http://[::1]:4000", "::1", 4000, "[::1]:4000"),
    ("http://[0:0::1]", "http://[::1]", "::1", 80, "[::1]"),
])
def test_upstream_parsing(text, url, host, port, host_header):
    upstream = load(f'[proxy]\nupstream = "{text}"\n').proxy.upstream
    assert (upstream.url, upstream.host, upstream.port, upstream.host_header) == (url, host, port, host_header)
    assert upstream.tls == url.startswith("https")


@pytest.mark.parametrize("text,host,port,rendered", [
    ("127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"),
    ("0.0.0.0:0", "0.0.0.0", 0, "0.0.0.0:0"),
    ("[::1]:9901", "::1", 9901, "[::1]:9901"),
    ("localhost:65535", "localhost", 65535, "localhost:65535"),
])
def test_listen_endpoint_parsing(text, host, port, rendered):
    listen = load(UPSTREAM + f'listen = "{text}"\n').proxy.listen
    assert (listen.host, listen.port, str(listen)) == (host, port, rendered)


def test_trusted_proxies_bare_address_is_a_one_address_network():
    config = load(UPSTREAM + 'trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "::1"]\n')
    assert config.proxy.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"), ipaddress.ip_network("::1/128"),
    )


def test_cors_lists_are_normalised_and_header_values_precomputed():
    policy = load(cors("""
        allow_origins = ["https://a.test"]
        allow_methods = ["delete", "patch", "PUT", "DELETE", "Get"]
        allow_headers = ["X-Token", "content-type", "x-token"]
        expose_headers = ["X-Total-Count"]
        max_age = 0
    """)).routes[0].policies.cors
    assert policy.allow_methods == frozenset({"DELETE", "patch", "PUT", "GET"})
    assert policy.allow_methods_value == "DELETE, patch, PUT, GET"
    assert policy.allow_headers == frozenset({"x-token", "content-type"})
    assert policy.allow_headers_value == "x-token, content-type"
    assert policy.expose_headers_value == "x-total-count"
    assert policy.max_age_value == "0"
    assert (policy.any_method, policy.any_header, policy.allow_credentials, policy.enforce) == (False, False, False, False)
    assert (policy.mode, policy.preflight, policy.allow_private_network) == ("set", "proxy", False)


def test_cors_wildcards_and_empty_lists():
    policy = load(cors("""
        allow_origins = ["*"]
        allow_methods = ["*"]
        allow_headers = ["*"]
        expose_headers = ["*"]
    """)).routes[0].policies.cors
    assert policy.origins.allows_any
    assert (policy.any_method, policy.allow_methods_value, policy.any_header, policy.allow_headers_value) == (True, None, True, None)
    assert policy.expose_headers_value == "*"
    empty = load(cors('allow_origins = ["https://a.test"]\n')).routes[0].policies.cors
    assert (empty.allow_methods_value, empty.allow_headers_value, empty.expose_headers_value, empty.max_age_value) == (None, None, None, None)


def test_origin_regex_alone_is_enough():
    policy = load(cors('allow_origin_regex = ["https://[a-z]+\\\\.a\\\\.test"]\n')).routes[0].policies.cors
    assert policy.origins.matches("https://x.a.test")


@pytest.mark.parametrize("table,name,value", [
    ('[routes.corp]\npolicy = "same-site"', "Cross-Origin-Resource-Policy", "same-site"),
    ('[routes.coop]\npolicy = "same-origin"\nreport_to = "default"', "Cross-Origin-Opener-Policy", 'same-origin; report-to="default"'),
    ('[routes.coop]\npolicy = "noopener-allow-popups"\nreport_only = true', "Cross-Origin-Opener-Policy-Report-Only", "noopener-allow-popups"),
    ('[routes.coep]\npolicy = "credentialless"\nreport_only = true\nreport_to = "coep"', "Cross-Origin-Embedder-Policy-Report-Only", 'credentialless; report-to="coep"'),
    ('[routes.reporting]\nendpoints = { default = "https://r.test/a", coep = "https://r.test/b" }', "Reporting-Endpoints", 'default="https://r.test/a", coep="https://r.test/b"'),
])
def test_header_policy_values(table, name, value):
    reporting = '\n[routes.reporting]\nendpoints = { default = "https://r.test/a", coep = "https://r.test/b" }' if "report_to" in table else ""
    policies = load(route(table + reporting + "\n")).routes[0].policies
    (policy,) = [p for p in policies.header_policies if p.headers[0][0] == name]
    assert policy.headers == ((name, value),)
    assert policy.mode == "set"


def test_coop_and_coep_own_both_their_headers():
    policies = load(route('[routes.coop]\npolicy = "same-origin"\n[routes.coep]\npolicy = "require-corp"\n')).routes[0].policies
    assert policies.header_policy("coop").owned == frozenset({"cross-origin-opener-policy", "cross-origin-opener-policy-report-only"})
    assert policies.header_policy("coep").owned == frozenset({"cross-origin-embedder-policy", "cross-origin-embedder-policy-report-only"})


def test_route_matchers_are_compiled_and_methods_normalised():
    config = load(route('hosts = ["API.test", "*.api.test"]\npaths = ["/a/*"]\nmethods = ["get", "PATCH", "patch"]\n'))
    (r,) = config.routes
    assert r.hosts == ("api.test", "*.api.test")
    assert r.methods == frozenset({"GET", "PATCH", "patch"})
    assert r.host_matches("x.api.test") and not r.host_matches("api.test.evil")
    assert r.path_matches("/a/") and not r.path_matches("/A/")


# --------------------------------------------------------------------------------------------
# TLS files


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    first, second = ca.issue_cert("a.test"), ca.issue_cert("b.test")
    paths = {
        "cert": directory / "cert.pem",
        "key": directory / "key.pem",
        "other_key": directory / "other-key.pem",
        "ca": directory / "ca.pem",
    }
    first.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    first.private_key_pem.write_to_path(str(paths["key"]))
    second.private_key_pem.write_to_path(str(paths["other_key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return paths


def test_tls_cert_and_key_that_belong_together_load(tls_files):
    config = load(UPSTREAM + f'tls_cert = "{tls_files["cert"]}"\ntls_key = "{tls_files["key"]}"\nupstream_ca = "{tls_files["ca"]}"\n')
    assert (config.proxy.tls_cert, config.proxy.tls_key) == (str(tls_files["cert"]), str(tls_files["key"]))
    assert config.proxy.upstream_ca == str(tls_files["ca"])


def test_tls_key_of_another_certificate_is_an_error(tls_files):
    ((key, message),) = problems(UPSTREAM + f'tls_cert = "{tls_files["cert"]}"\ntls_key = "{tls_files["other_key"]}"\n')
    assert key == "proxy.tls_key"
    assert "cannot be used with tls_cert" in message


def test_tls_cert_that_is_not_a_certificate_is_an_error(tls_files):
    ((key, message),) = problems(UPSTREAM + f'tls_cert = "{tls_files["key"]}"\ntls_key = "{tls_files["key"]}"\n')
    assert key == "proxy.tls_cert"
    assert "cannot load a PEM certificate" in message


def test_upstream_ca_that_is_not_pem_is_an_error(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    ((key, message),) = problems(UPSTREAM + f'upstream_ca = "{bad}"\n')
    assert (key, "cannot load CA certificates" in message) == ("proxy.upstream_ca", True)


def test_relative_tls_paths_start_at_the_config_directory(tls_files, tmp_path):
    config_path = tls_files["cert"].parent / "c.toml"
    config_path.write_text(UPSTREAM + 'tls_cert = "cert.pem"\ntls_key = "key.pem"\n')
    assert load_config(str(config_path)).proxy.tls_cert == str(tls_files["cert"])


# --------------------------------------------------------------------------------------------
# Warnings: what jub0bs/cors refuses but coxp allows


WARNINGS = [
    (cors('allow_origins = ["null"]\n'), "routes[0].cors.allow_origins[0]", "opaque origin"),
    (cors('allow_origins = ["http://app.example.test"]\nallow_credentials = true\n'), "routes[0].cors.allow_origins[0]", "use https"),
    (cors('allow_origins = ["https://*.github.io"]\n'), "routes[0].cors.allow_origins[0]", "shared-hosting suffix"),
    (cors('allow_origins = ["https://a.test"]\nallow_headers = ["Cookie"]\n'), "routes[0].cors.allow_headers[0]", "forbidden request-header name"),
    (cors('allow_origins = ["https://a.test"]\nallow_headers = ["Sec-Fetch-Mode"]\n'), "routes[0].cors.allow_headers[0]", "forbidden request-header name"),
    (cors('allow_origins = ["https://a.test"]\nallow_headers = ["Access-Control-Allow-Origin"]\n'), "routes[0].cors.allow_headers[0]", "is a response header"),
    (cors('allow_origins = ["https://a.test"]\nexpose_headers = ["Access-Control-Max-Age"]\n'), "routes[0].cors.expose_headers[0]", "no effect"),
    (route('[routes.coop]\npolicy = "same-origin"\nreport_to = "main"\n'), "routes[0].coop.report_to", "is not an endpoint of this route"),
    (route('[routes.reporting]\nendpoints = { default = "http://reports.example.test/r" }\n'), "routes[0].reporting.endpoints.default", "is not https"),
]


@pytest.mark.parametrize("text,key,fragment", WARNINGS, ids=[case[1] + ":" + case[2] for case in WARNINGS])
def test_warning_is_rendered_with_file_and_key(text, key, fragment):
    warnings = load(text).warnings
    assert any(w.startswith(f"c.toml: {key}: warning: ") and fragment in w for w in warnings), warnings


# Requests are routed on the raw path and on its normalised form: a glob that is not normalised
# matches the two views differently, so the requests it was written for are refused.
GLOB_WARNINGS = [
    ("/api/%2e%2e/admin", 'write "/admin"'), ("/a//b", 'write "/a/b"'), ("/a/./b/*", 'write "/a/b/*"'),
    ("/a/../b", 'write "/b"'), ("/a/.", 'write "/a/"'), ("/a/..", 'write "/"'), ("/a%2Fb/*", 'write "/a/b/*"'),
    ("/a;v=1/*", 'write "/a/*"'), ("/a\\\\b", 'write "/a/b"'), ("/a%zz", "400 bad-escape"),
]


@pytest.mark.parametrize("glob, fragment", GLOB_WARNINGS)
def test_a_glob_not_in_normalised_form_gets_a_warning(glob, fragment):
    [warning] = load(route(f'paths = ["/ok/*", "{glob}"]\n')).warnings
    assert warning.startswith("c.toml: routes[0].paths[1]: warning: ") and fragment in warning
    assert "ambiguous-path" in warning or "bad-escape" in warning


@pytest.mark.parametrize("glob", ["/*", "/.well-known/*", "/a.b/..c", "/a/*/b", "/~user/*"])
def test_a_normalised_glob_gets_no_warning(glob):
    assert load(route(f'paths = ["{glob}"]\n')).warnings == ()


def test_loopback_http_origins_with_credentials_are_fine():
    assert load(cors('allow_origins = ["http://localhost:*", "http://127.0.0.1:3000"]\nallow_credentials = true\n')).warnings == ()


# Secure Contexts: only localhost names and loopback addresses are trustworthy over http. Both
# places that ask (credentialed origins, report endpoints) answer alike; `127.evil.test` is a
# DNS name anyone can register, not 127.0.0.0/8.
LOOPBACK_HOSTS = ["localhost", "app.localhost", "127.0.0.1", "127.1.2.3", "[::1]"]
NOT_LOOPBACK_HOSTS = ["127.evil.test", "localhost.evil.test", "128.0.0.1", "[::2]", "evil-localhost"]


def _http_warnings(host: str) -> tuple[bool, bool]:
    """(credentialed origin warned, report endpoint warned) for `http://host`."""
    credentialed = load(cors(f'allow_origins = ["http://{host}"]\nallow_credentials = true\n')).warnings
    report = load(route(f'[routes.reporting]\nendpoints = {{ default = "http://{host}/r" }}\n')).warnings
    return any("use https" in w for w in credentialed), any("is not https" in w for w in report)


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_loopback_hosts_are_trusted_over_http_everywhere(host):
    assert _http_warnings(host) == (False, False)


@pytest.mark.parametrize("host", NOT_LOOPBACK_HOSTS)
def test_names_that_only_look_loopback_are_warned_about_everywhere(host):
    assert _http_warnings(host) == (True, True)


# --------------------------------------------------------------------------------------------
# Summary


def test_summary_is_one_line_per_route_then_default():
    config = load(UPSTREAM + """
        [defaults.coop]
        policy = "same-origin"
        [[routes]]
        name = "api"
        hosts = ["api.example.test", "*.api.example.test"]
        paths = ["/api/*", "/health"]
        methods = ["GET", "POST"]
        upstream = "http://127.0.0.1:4000"
        [routes.cors]
        allow_origins = ["https://app.example.test", "https://*.example.test"]
        allow_credentials = true
        [[routes]]
        name = "static"
    """)
    lines = summarize(config)
    assert [line.split()[0] for line in lines] == ["api", "static", "default"]
    assert lines[0] == (
        "api      hosts=api.example.test,*.api.example.test paths=/api/*,/health methods=GET,POST "
        "upstream=http://127.0.0.1:4000 cors=set(origins: 2 patterns, credentials) coop=set(same-origin)"
    )
    assert lines[2] == "default  hosts=any paths=any methods=any upstream=http://127.0.0.1:3000 coop=set(same-origin)"


# --------------------------------------------------------------------------------------------
# Properties: whatever the input, the loader answers with a Config or a ConfigError


KEYS = sorted({
    *sections_module.TOP_KEYS, *sections_module.PROXY_KEYS, *sections_module.LOG_KEYS, *sections_module.LIMIT_KEYS,
    *sections_module.ROUTE_OWN_KEYS, *policies_module.table_names(), *cors_module.CORS_KEYS, *(key for table in policies_module.HEADER_TABLES for key in table.keys),
    "endpoints", "x-a",
})
STRINGS = st.sampled_from([
    "*", "null", "https://a.test", "http://localhost:*", "https://*.com", "[::1]:0", "127.0.0.1:0",
    "http://127.0.0.1:1", "/api/*", "GET", "set", "pass", "same-origin", "default", "x y", "",
]) | st.text(max_size=12)
SCALARS = st.none() | st.booleans() | st.integers(-2, 100_000) | st.floats(allow_nan=True) | STRINGS
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
TREES = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)
ROUTE_TREES = st.fixed_dictionaries({
    "routes": st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6), max_size=3),
    "defaults": st.dictionaries(st.sampled_from(policies_module.table_names()), st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5), max_size=3),
})


def _loads_or_config_error(text: str, overrides=None) -> None:
    try:
        load_config_text(text, overrides=overrides)
    except ConfigError as error:
        assert error.problems
        assert all(isinstance(line, str) for line in error.lines())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES | ROUTE_TREES)
def test_random_trees_give_a_config_or_a_config_error(tree):
    _loads_or_config_error("", overrides=tree)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list('[]{}=",.\n #\'abc1*-_x') + ["routes", "proxy", "name", '"""']), max_size=60).map("".join)
       | st.text(max_size=40))
def test_random_text_gives_a_config_or_a_config_error(text):
    _loads_or_config_error(text)


# --------------------------------------------------------------------------------------------
# Friendlier errors: case mistakes get a "did you mean", problems under routes[i] name the route


@pytest.mark.parametrize(("text", "key", "meant"), [
    (route('[routes.CORS]\nallow_origins = ["https://a.test"]\n'), "routes[0].CORS", "cors"),
    ("[Proxy]\n" + UPSTREAM, "Proxy", "proxy"),
    (cors('Allow-Origins = ["https://a.test"]\nallow_origins = ["https://a.test"]\n'),
     "routes[0].cors.Allow-Origins", "allow_origins"),
    (UPSTREAM + "[Defaults.COOP]\n", "Defaults", "defaults"),
], ids=["routes.CORS", "Proxy", "Allow-Origins", "Defaults"])
def test_case_and_dash_mistakes_suggest_the_key_meant(text, key, meant):
    found = dict(problems(text))
    assert f'did you mean "{meant}"?' in found[key], found


NAMED = UPSTREAM + """
[[routes]]
name = "pages"
[[routes]]
name = "api"
[routes.cors]
allow_origins = ["https://a.test/"]
[[routes]]
paths = ["/x"]
"""


def test_problems_under_a_route_name_it_and_keep_their_exact_key_path():
    with pytest.raises(ConfigError) as caught:
        load(NAMED)
    lines = caught.value.lines()
    assert any(line.startswith('c.toml: routes[1].cors.allow_origins[0]: "https://a.test/" has a path; ')
               and line.endswith('; in route "api"') for line in lines), lines
    # A route without a name has only its index; the missing name is itself the problem.
    assert [line for line in lines if line.startswith("c.toml: routes[2].")] == [
        next(line for line in lines if line.startswith("c.toml: routes[2].name: missing"))]


def test_warnings_under_a_route_name_it():
    config = load(route('[routes.cors]\nallow_origins = ["https://*.github.io"]\n'))
    assert any(w.startswith("c.toml: routes[0].cors.allow_origins[0]: ") and w.endswith('; in route "r"')
               for w in config.warnings), config.warnings


def test_a_duplicate_name_is_not_named_twice():
    found = problems(UPSTREAM + '[[routes]]\nname = "a"\n[[routes]]\nname = "a"\n')
    assert found == [("routes[1].name", '"a" is already the name of routes[0]; route names are unique')]


# --------------------------------------------------------------------------------------------
# The warning about requests that reach `default` while a route owns CORS

OWNS_CORS = '[routes.cors]\nallow_origins = ["https://app.example.test"]\n'
DEFAULT_PASSES = "defaults.cors"


@pytest.mark.parametrize("text", [
    route('paths = ["/api/*"]\n' + OWNS_CORS),
    route('hosts = ["api.example.test"]\n' + OWNS_CORS),
    route('methods = ["GET"]\n' + OWNS_CORS),
    route('paths = ["/*"]\nhosts = ["api.example.test"]\n' + OWNS_CORS),
    route('paths = ["/api/*"]\n[routes.cors]\nmode = "default"\nallow_origins = ["https://a.test"]\n'),
    # a catch-all route without CORS still leaves the first route's CORS to its routes only
    route('paths = ["/api/*"]\n' + OWNS_CORS) + '[[routes]]\nname = "rest"\npaths = ["/static/*", "/img/*"]\n',
])
def test_a_route_owning_cors_while_default_passes_it_is_warned_about(text):
    [warning] = [w for w in load(text).warnings if f": {DEFAULT_PASSES}: " in w]
    assert warning.startswith(f"c.toml: {DEFAULT_PASSES}: warning: route \"r\" owns CORS")
    assert '[defaults.cors] with mode = "remove"' in warning


@pytest.mark.parametrize("text", [
    route(OWNS_CORS),  # no paths, hosts or methods: the route catches everything
    route('paths = ["/*"]\n' + OWNS_CORS),
    route('paths = ["/api/*"]\n' + OWNS_CORS) + '[[routes]]\nname = "all"\npaths = ["/health", "/*"]\n',
    route('paths = ["/api/*"]\n' + OWNS_CORS) + '[defaults.cors]\nmode = "remove"\n',
    route('paths = ["/api/*"]\n' + OWNS_CORS) + '[defaults.cors]\nmode = "pass"\n',
    route('paths = ["/api/*"]\n[routes.cors]\nmode = "remove"\n'),
    route('paths = ["/api/*"]\n[routes.cors]\nmode = "pass"\n'),
])
def test_no_warning_when_default_is_decided_or_unreachable(text):
    assert not [w for w in load(text).warnings if f": {DEFAULT_PASSES}: " in w]


# --------------------------------------------------------------------------------------------
# The header-table registry: a new policy header is one entry


def test_a_new_policy_header_is_one_registry_entry(monkeypatch):
    """`X-Content-Type-Options` added as one `HeaderTable`: its table is accepted in routes and
    [defaults], validated, inherited, written by the policy engine (removing the upstream's),
    and summarised by `coxp check` — no other edit."""
    from proxy.policy import apply_edits, decide, request_info

    nosniff = policies_module.HeaderTable("xcto", "X-Content-Type-Options", ("nosniff",), "nosniff")
    tables = (*policies_module.HEADER_TABLES, nosniff)
    monkeypatch.setattr(policies_module, "HEADER_TABLES", tables)
    monkeypatch.setattr(policies_module, "HEADER_POLICY_TABLES", policies_module.header_policy_tables(tables))

    config = load(UPSTREAM + """
        [defaults.xcto]
        policy = "nosniff"
        [[routes]]
        name = "inherits"
        paths = ["/a/*"]
        [[routes]]
        name = "opted-out"
        [routes.xcto]
        mode = "remove"
    """)
    inherits, opted_out = config.routes
    assert inherits.policies.header_policy("xcto") is config.default_route.policies.header_policy("xcto")

    def response(route, upstream):
        decision = decide(route, request_info("GET", [], "https", "proxy.test"))
        return apply_edits(decision.edits, upstream).headers

    assert response(inherits, [("X-Content-Type-Options", "other")]) == [("X-Content-Type-Options", "nosniff")]
    assert response(opted_out, [("X-Content-Type-Options", "other")]) == []
    assert summarize(config)[0].endswith("xcto=set(nosniff)")
    assert problems(UPSTREAM + '[defaults.xcto]\npolicy = "sniff"\n') == [
        ("defaults.xcto.policy", '"sniff" is not one of: nosniff')]
    assert problems(UPSTREAM + "[defaults.xcto]\nreport_to = \"x\"\n")[0][0] == "defaults.xcto.report_to"
