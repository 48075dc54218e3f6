"""Value parsers: each turns one configured string into a value or raises `Invalid` saying
what to write instead."""
from __future__ import annotations

import ipaddress
import re

from proxy.config.reading import Invalid, quoted
from proxy.model import Endpoint, IPNetwork, Upstream
from proxy.paths import MalformedEscape, normalised_path
from proxy.standards import DEFAULT_PORTS, NORMALISED_METHODS, TOKEN_RE, is_loopback_host

# RFC 8941 §3.1.2: a Structured Field dictionary key, the grammar of Reporting-Endpoints names.
SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOSTNAME = re.compile(rf"{HOST_LABEL}(?:\.{HOST_LABEL})*\.?")
ENDPOINT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})")
AUTHORITY = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*))(?::(?P<port>[0-9]{1,5}))?")
URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.DOTALL)



def parse_endpoint(text: str) -> Endpoint:
    """`HOST:PORT` or `[IPv6]:PORT`; port 0 asks the system for a free port."""
    match = ENDPOINT.fullmatch(text)
    if match is None:
        raise Invalid(f'{quoted(text)} is not HOST:PORT; write e.g. "127.0.0.1:8080" or "[::1]:8080"')
    port = int(match["port"])
    if port > 65535:
        raise Invalid(f"port {port} is out of range; write a port between 0 and 65535")
    if match["v6"] is not None:
        return Endpoint(_ipv6(match["v6"], text), port)
    host = match["host"].lower()
    if not HOSTNAME.fullmatch(host):
        raise Invalid(f'{quoted(text)} has no valid host; write e.g. "127.0.0.1:{port}" or "0.0.0.0:{port}"')
    return Endpoint(host, port)


def _ipv6(text: str, whole: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise Invalid(f"{quoted(whole)}: {quoted(text)} is not an IPv6 address; write e.g. [::1]") from None


def parse_upstream(text: str) -> Upstream:
    """`scheme://host[:port]`: http or https, no userinfo, path, query or fragment."""
    match = URL.fullmatch(text)
    if match is None:
        raise Invalid(f'{quoted(text)} is not a URL; write scheme://host[:port], e.g. "http://127.0.0.1:3000"')
    scheme = match["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        raise Invalid(f'{quoted(text)} has scheme "{scheme}"; an upstream is http:// or https://')
    _reject_url_rest(text, match["rest"])
    authority = match["authority"]
    if "@" in authority:
        raise Invalid(f"{quoted(text)} has userinfo; remove the part before @ (credentials do not belong in the config URL)")
    parts = AUTHORITY.fullmatch(authority)
    if parts is None:
        raise Invalid(f'{quoted(text)} has an invalid host or port; write scheme://host[:port], e.g. "http://127.0.0.1:3000"')
    port = DEFAULT_PORTS[scheme] if parts["port"] is None else int(parts["port"])
    if not 1 <= port <= 65535:
        raise Invalid(f"{quoted(text)}: port {port} is out of range; write a port between 1 and 65535")
    if parts["v6"] is not None:
        host = _ipv6(parts["v6"], text)
        named = f"[{host}]"
    else:
        host = parts["host"].lower()
        if not HOSTNAME.fullmatch(host):
            raise Invalid(f'{quoted(text)} has no valid host; write e.g. "http://127.0.0.1:3000" (non-ASCII names in punycode)')
        named = host
    port_suffix = "" if port == DEFAULT_PORTS[scheme] else f":{port}"
    return Upstream(f"{scheme}://{named}{port_suffix}", scheme, host, port, f"{named}{port_suffix}")


def _reject_url_rest(text: str, rest: str) -> None:
    # A lone "/" is the empty path of RFC 3986 and harmless; anything else would be silently
    # ignored, since request paths reach the upstream exactly as the client sent them.
    if rest in ("", "/"):
        return
    what = {"?": "a query", "#": "a fragment"}.get(rest[0], f"a path ({rest})")
    raise Invalid(f"{quoted(text)} has {what}; an upstream is scheme://host[:port] — requests keep their own path and query")


def parse_network(text: str) -> IPNetwork:
    """A CIDR network; a bare address is a one-address network."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Invalid(f'{quoted(text)} is not an IP address or CIDR network; write e.g. "10.0.0.0/8" or "192.0.2.7"') from None
    raise Invalid(f'{quoted(text)} has host bits set; write "{loose}"')


def parse_host_pattern(text: str) -> str:
    """A `hosts` entry: an exact host name or IP address, or `*.domain`; returned lower-cased."""
    host = text.lower()
    if host == "*":
        raise Invalid('"*" alone is not a host pattern; omit hosts to match every host')
    if host.startswith("[") and host.endswith("]"):
        return _ipv6(host[1:-1], text)
    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        pass
    name = host[2:] if host.startswith("*.") else host
    if "*" in name:
        raise Invalid(f'{quoted(text)}: only a leading "*." is supported, e.g. "*.example.test"')
    if ":" in name:
        raise Invalid(f"{quoted(text)} has a port; hosts match the Host "
                      f"header without its port, write {quoted(host.rsplit(':', 1)[0])}")
    if not HOSTNAME.fullmatch(name):
        raise Invalid(f'{quoted(text)} is not a host name; write e.g. '
                      '"api.example.test" or "*.example.test" (non-ASCII names in punycode)')
    return host


def parse_path_glob(text: str) -> str:
    """A `paths` entry: starts with "/", printable ASCII as it appears in a request target."""
    if not text.startswith("/"):
        raise Invalid(f'{quoted(text)} does not start with "/"; write e.g. "/api/*" ("/*" matches every path)')
    if "?" in text or "#" in text:
        raise Invalid(f"{quoted(text)} has a query or fragment; paths are matched without the query, remove it")
    if any(not "!" <= char <= "~" for char in text):
        # Request targets are ASCII without spaces (RFC 9112 §3.2); paths are never decoded.
        raise Invalid(f"{quoted(text)} has a space, control or "
                      "non-ASCII character; write it percent-encoded, as browsers send it")
    return text


# What a glob may not contain for its raw and normalised views to be the same (a `%XX` escape,
# an empty or dot segment, `;params`, `\`): such a glob matches a request's two views differently.
_NOT_NORMALISED = re.compile(r"%|//|/\.\.?(?:/|$)|;|\\")


def path_glob_warning(glob: str) -> str | None:
    """Why a valid glob will not do what it says, or None. Requests are routed on the raw path
    and on its normalised form; a route whose glob matches only one of them gets the request
    refused (400 ambiguous-path) instead of matched."""
    if _NOT_NORMALISED.search(glob) is None:
        return None
    try:
        normal = normalised_path(glob)
    except MalformedEscape:
        return (f"{quoted(glob)} has a '%' that is not %XX; requests with such a path are refused "
                "(400 bad-escape), so it never matches")
    return (f"{quoted(glob)} is not in normalised form; requests are routed on the raw path and on "
            "its normalised form (%XX decoded, dot segments and ;params removed, '//' merged), and one that "
            f"matches in only one of them is refused (400 ambiguous-path); write {quoted(normal)}")


def parse_method(text: str) -> str:
    """A method token (RFC 9110 §9.1), the six Fetch-normalised names upper-cased."""
    if not TOKEN_RE.fullmatch(text):
        raise Invalid(f'{quoted(text)} is not a method (an HTTP token, RFC 9110 §9.1); write e.g. "PATCH"')
    upper = text.upper()
    return upper if upper in NORMALISED_METHODS else text


def parse_sf_key(text: str) -> str:
    if not SF_KEY.fullmatch(text):
        raise Invalid(f'{quoted(text)} is not an endpoint name (lower-case letters, digits, "_", "-", ".", "*", '
                      'starting with a letter; RFC 8941 §3.1.2); write e.g. "default"')
    return text


def parse_report_url(text: str) -> str:
    """An absolute http(s) URL, or a path (`/.coxp/reports`), which browsers resolve against
    the page's URL (Reporting API §3.2, "process reporting endpoints")."""
    match = URL.fullmatch(text)
    relative = text.startswith("/") and not text.startswith("//")
    if not relative and (match is None or match["scheme"].lower() not in DEFAULT_PORTS or not match["authority"]):
        raise Invalid(f'{quoted(text)} is neither an absolute http(s) URL nor a path; write e.g. '
                      '"https://reports.example.test/r" or "/.coxp/reports"')
    if any(not "!" <= char <= "~" for char in text) or '"' in text or "\\" in text:
        # The URL is written inside a Structured Field string (RFC 8941 §3.3.3).
        raise Invalid(f'{quoted(text)} has a space, quote, backslash or non-ASCII character; percent-encode it')
    return text


def parse_collector_path(text: str) -> str:
    """The report collector's path: compared exactly with the request path (query excluded)."""
    if not text.startswith("/") or text.startswith("//"):
        raise Invalid(f'{quoted(text)} is not a path; write e.g. "/.coxp/reports"')
    if any(not "!" <= char <= "~" for char in text) or any(char in text for char in "?#*%\\"):
        raise Invalid(f'{quoted(text)} must be a plain path of visible ASCII, without "?", "#", "*", "%" or "\\"')
    return text


def is_loopback_url(url: str) -> bool:
    """Whether `url`'s host is loopback (`proxy.standards.is_loopback_host`): trustworthy over http."""
    match = URL.fullmatch(url)
    parts = AUTHORITY.fullmatch(match["authority"]) if match else None
    if parts is None:
        return False
    host = parts["v6"] if parts["v6"] is not None else parts["host"].lower()
    return is_loopback_host(host)
