"""Real origin servers for the interop tests, each started as our own process on a free port
and stopped at the end: Apache 2.4 and lighttpd (static files + CGI, generated configs, not the
system services), Python's http.server on HTTP/1.0, gunicorn (WSGI) and a Node `http` server.

The Python origins and the web servers' CGI program share `servers/endpoints.py`; the Node
server implements the same paths. `Backend.path(endpoint, **query)` maps an endpoint to the
server's own URL path (the web servers serve sizes, gzip and redirects themselves).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from harness import PYTHON, free_port

SERVERS = Path(__file__).resolve().parent / "servers"
START_SECONDS = 30.0
SIZES = (0, 1, 1000, 65536, 300_000, 2 * 1024 * 1024)

_spec = importlib.util.spec_from_file_location("interop_endpoints", SERVERS / "endpoints.py")
ENDPOINTS = importlib.util.module_from_spec(_spec)  # the servers' own module: the same bytes
_spec.loader.exec_module(ENDPOINTS)


class Backend:
    name = ""
    reads_chunked = True  # False: a chunked request body is lost (HTTP/1.0 server, CGI)

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"coxp-interop-{self.name}-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def path(self, endpoint: str, **query: object) -> str:
        return f"/{endpoint}" + (f"?{urlencode(query)}" if query else "")

    def start(self) -> Backend:
        command = self.command()
        if shutil.which(command[0]) is None:
            raise AssertionError(f"{command[0]} is not installed: `make sysdeps` installs the servers of .ci/apt-packages.txt")
        log = open(self.dir / "server.log", "wb")
        # A session of its own: Apache's prefork parent signals its whole process group on stop.
        self.process = subprocess.Popen(command, cwd=SERVERS, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.process.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{self.name} not listening after {START_SECONDS} s: {self.log()}")

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class Node(Backend):
    name = "node"

    def command(self) -> list[str]:
        return ["node", str(SERVERS / "node_http.js"), str(self.port)]


class Http10(Backend):
    name = "http.server"
    reads_chunked = False

    def command(self) -> list[str]:
        return [PYTHON, str(SERVERS / "http10.py"), str(self.port)]


class Gunicorn(Backend):
    name = "gunicorn"

    def command(self) -> list[str]:
        # gthread: keep-alive connections (the sync worker closes after every response).
        return [PYTHON, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--worker-class", "gthread",
                "--workers", "1", "--threads", "8", "--keep-alive", "30", "--log-level", "warning", "wsgi_app:app"]


APACHE_MODULES = "/usr/lib/apache2/modules"
APACHE_CONFIG = """\
ServerRoot {dir}
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {dir}/httpd.pid
DefaultRuntimeDir {dir}
Mutex file:{dir} default
ErrorLog {dir}/error.log
LogLevel warn
{modules}
{user}
StartServers 2
MinSpareServers 1
MaxSpareServers 4
MaxRequestWorkers 16
KeepAlive On
TypesConfig {dir}/mime.types
AddType text/plain .txt
AddType application/octet-stream .bin
DocumentRoot {dir}/htdocs
<Directory {dir}/htdocs>
    Require all granted
</Directory>
ScriptAlias /cgi-bin/ {dir}/cgi-bin/
<Directory {dir}/cgi-bin>
    Require all granted
</Directory>
Redirect 302 /old /static/target.txt
AddOutputFilterByType DEFLATE text/plain
"""


class WebServer(Backend):
    """A classic web server: static files for sizes, 304 and gzip (its own compression), a
    configured redirect at /old, and the CGI program for the rest."""

    def site(self) -> None:
        """htdocs/static and cgi-bin under `self.dir`, readable by an unprivileged worker."""
        self.dir.chmod(0o755)
        static = self.dir / "htdocs" / "static"
        static.mkdir(parents=True)
        for size in SIZES:
            (static / f"size-{size}.bin").write_bytes(ENDPOINTS.pattern(size))
        (static / "target.txt").write_text("redirected here\n")
        (static / "text.txt").write_text("compressed by the server " * 4000)
        shutil.copytree(SERVERS / "cgi-bin", self.dir / "cgi-bin")
        shutil.copy(SERVERS / "endpoints.py", self.dir / "endpoints.py")
        for path in self.dir.rglob("*"):
            path.chmod(0o755 if path.is_dir() or path.suffix == ".cgi" else 0o644)

    def path(self, endpoint: str, **query: object) -> str:
        if endpoint == "size":
            return f"/static/size-{query['n']}.bin"
        if endpoint == "gzip":
            return "/static/text.txt"
        if endpoint == "redirect":
            return "/old"
        return "/cgi-bin/endpoint.cgi" + super().path(endpoint, **query)


class Apache(WebServer):
    """apache2 (prefork + mod_cgi) run in the foreground with a generated config: mod_deflate
    compresses, mod_alias redirects."""

    name = "apache"
    reads_chunked = False  # mod_cgi passes a chunked body without CONTENT_LENGTH: the program reads none

    def command(self) -> list[str]:
        self.site()  # the children run as nobody when we are root
        (self.dir / "mime.types").write_text("")
        modules = "\n".join(f"LoadModule {name}_module {APACHE_MODULES}/mod_{file}.so" for name, file in (
            ("mpm_prefork", "mpm_prefork"), ("authz_core", "authz_core"), ("mime", "mime"), ("alias", "alias"),
            ("cgi", "cgi"), ("filter", "filter"), ("deflate", "deflate")))
        user = "User nobody\nGroup nogroup" if os.geteuid() == 0 else ""
        config = self.dir / "httpd.conf"
        config.write_text(APACHE_CONFIG.format(dir=self.dir, port=self.port, modules=modules, user=user))
        return ["/usr/sbin/apache2", "-f", str(config), "-DFOREGROUND"]


LIGHTTPD_CONFIG = """\
server.document-root = "{dir}/htdocs"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{dir}/error.log"
server.modules += ("mod_alias", "mod_redirect", "mod_cgi", "mod_deflate")
mimetype.assign = (".txt" => "text/plain", ".bin" => "application/octet-stream")
alias.url = ("/cgi-bin/" => "{dir}/cgi-bin/")
$HTTP["url"] =~ "^/cgi-bin/" {{
    cgi.assign = (".cgi" => "")
}}
url.redirect = ("^/old$" => "http://${{url.authority}}/static/target.txt")
url.redirect-code = 302
deflate.mimetypes = ("text/plain")
deflate.allowed-encodings = ("gzip")
"""


class Lighttpd(WebServer):
    """lighttpd in the foreground with a generated config: mod_deflate compresses, mod_redirect
    redirects; it reads a chunked body whole before starting the CGI program."""

    name = "lighttpd"

    def command(self) -> list[str]:
        self.site()
        config = self.dir / "lighttpd.conf"
        config.write_text(LIGHTTPD_CONFIG.format(dir=self.dir, port=self.port))
        return ["/usr/sbin/lighttpd", "-D", "-f", str(config)]


BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (Apache, Lighttpd, Http10, Gunicorn, Node)}
