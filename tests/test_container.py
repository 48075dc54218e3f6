"""The container image and the Kubernetes manifests, run for real with Podman.

The image is built from `docker/Dockerfile` on a Debian base made by mmdebstrap (no image
registry is needed: the base is imported as a local image, passed as BASE_IMAGE, and the
wheels of coxp's dependencies are built on this host and installed with --no-index), then run
on the host network with the example config in front of this test's upstream. The Deployment
and ConfigMap of `docker/k8s/` run with `podman kube play`.

Podman's engine settings come from `tests/containers.conf` (CONTAINERS_CONF) on every call,
so a fresh machine needs only the packages in `.ci/apt-packages.txt`. The base image is kept
between runs (`localhost/coxp-test-base:bookworm`), and so are the dependency wheels (under
/var/tmp, keyed by pyproject.toml); the coxp image is built anew and removed at the end.
Every container and pod has a name unique to this run, and only those are removed.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness import REPO, WAIT, free_port, http_request, run_cli, unique

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

BASE_IMAGE = "localhost/coxp-test-base:bookworm"
CACHE = Path(os.environ.get("COXP_TEST_CACHE", "/var/tmp/coxp-test"))
ENGINE_ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "tests" / "containers.conf")}
RUN = f"coxp-test-{os.getpid()}"  # prefix of every name this run creates
ORIGIN = "https://app.example.test"
STARTUP = 30.0  # seconds for a container to answer (a cold start on a loaded machine)
_names = itertools.count(1)


def podman(*args: str, timeout: float = 120, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=ENGINE_ENV, capture_output=True, text=True, timeout=timeout,
                            input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@contextmanager
def locked(name: str):
    """One test run at a time builds a shared cache entry (others on this machine wait, then reuse it)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


INSTALL_HINT = ("the container tests need rootful Podman with runc, mmdebstrap and uidmap: as root, "
                "`apt-get install podman runc mmdebstrap uidmap` (they are listed in .ci/apt-packages.txt; "
                "`make test` installs them)")


@pytest.fixture(scope="module")
def engine() -> None:
    """Podman works here, or every test of this module FAILS saying what to install."""
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: {INSTALL_HINT}", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail(f"not running as root: {INSTALL_HINT}", pytrace=False)
    info = podman("info", "--format", "json", check=False, timeout=60)
    if info.returncode != 0:
        pytest.fail(f"`podman info` failed ({info.stderr.strip()[-500:]}): {INSTALL_HINT}", pytrace=False)


@pytest.fixture(scope="module")
def base_image(engine) -> str:
    """A Debian bookworm image with python3 and venv, built once per machine with mmdebstrap."""
    with locked("base-image"):
        if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
            with tempfile.TemporaryDirectory(dir=CACHE) as work:
                rootfs = Path(work) / "rootfs.tar"
                subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase",
                                "--include=python3,python3-venv,ca-certificates", "bookworm", str(rootfs)],
                               check=True, timeout=600, stdin=subprocess.DEVNULL, capture_output=True)
                podman("import", "--quiet", str(rootfs), BASE_IMAGE, timeout=300)
    return BASE_IMAGE


@pytest.fixture(scope="module")
def wheelhouse(engine) -> Path:
    """Wheels of coxp's dependencies (and its build backend) for this host's Python, built once
    per pyproject.toml: the image build installs from them with --no-index."""
    pyproject = (REPO / "pyproject.toml").read_bytes()
    directory = CACHE / f"wheels-py{sys.version_info[0]}{sys.version_info[1]}-{hashlib.sha256(pyproject).hexdigest()[:16]}"
    with locked("wheels"):
        if not (directory / "complete").exists():
            project = tomllib.loads(pyproject.decode())
            requirements = [*project["project"]["dependencies"], *project["build-system"]["requires"], "wheel"]
            shutil.rmtree(directory, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(directory),
                            *requirements], check=True, timeout=600, stdin=subprocess.DEVNULL, capture_output=True)
            (directory / "complete").touch()
    return directory


@pytest.fixture(scope="module")
def image(base_image, wheelhouse):
    tag = f"localhost/{RUN}:latest"
    started = time.monotonic()
    # --layers=false: no layer cache (Podman 4.3 reused a cached COPY of proxy/ after a source
    # file had changed) and no image of the build stage left behind.
    podman("build", "--quiet", "--layers=false", "--pull=never", "--format", "docker", "--network", "host",
           "--build-arg", f"BASE_IMAGE={base_image}",
           "--build-arg", "PIP_OPTIONS=--no-index --find-links /wheelhouse",
           "-v", f"{wheelhouse}:/wheelhouse:ro",
           "-f", str(REPO / "docker" / "Dockerfile"), "-t", tag, str(REPO), timeout=600)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    print(f"\nimage {tag}: built in {time.monotonic() - started:.0f} s, {size / 1e6:.0f} MB", file=sys.stderr)
    yield tag
    podman("rmi", "--force", tag, check=False)


def example_config(upstream: str, listen: int, admin: int, text: str | None = None) -> str:
    """The example config (docker/coxp.toml unless `text`) on free loopback ports in front of `upstream`:
    on the host network the container's ports are this machine's."""
    text = text if text is not None else (REPO / "docker" / "coxp.toml").read_text()
    replaced = text.replace("0.0.0.0:8080", f"127.0.0.1:{listen}").replace("0.0.0.0:9901", f"127.0.0.1:{admin}")
    replaced = re.sub(r'upstream = "http://[^"]+"', f'upstream = "{upstream}"', replaced)
    assert replaced.count(f"127.0.0.1:{listen}") == 1 and replaced.count(f"127.0.0.1:{admin}") == 1
    assert replaced.count(upstream) == 1
    return replaced


def wait_ready(admin: int, what: str, logs) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        try:
            if http_request(admin, "GET", "/readyz", host="localhost").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} never became ready; its log:\n{logs()}")


class Container:
    def __init__(self, image: str, config: Path, admin: int, port: int) -> None:
        self.name = f"{RUN}-{next(_names)}"
        self.config, self.admin, self.port = config, admin, port
        # --health-interval disable: no systemd timer (there is no systemd here); `podman
        # healthcheck run` still runs the image's HEALTHCHECK command on demand.
        podman("run", "--detach", "--name", self.name, "--network", "host", "--read-only",
               "--health-interval", "disable", "-v", f"{config}:/etc/coxp/coxp.toml:ro", image)
        wait_ready(admin, self.name, self.logs)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout[-3000:] + result.stderr[-3000:]

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *argv, check=check)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture(scope="module")
def container(image, query_upstream, tmp_path_factory):
    port, admin = free_port(), free_port()
    config = tmp_path_factory.mktemp("container") / "coxp.toml"
    config.write_text(example_config(query_upstream.url, port, admin))
    running = Container(image, config, admin, port)
    yield running
    running.remove()


def test_a_cors_request_gets_the_configured_headers(container):
    response = http_request(container.port, "GET", "/api/items", [("Origin", ORIGIN)], host="api.test")
    assert response.status == 200 and response.body == b"upstream GET"
    assert response.value("Access-Control-Allow-Origin") == ORIGIN
    assert response.value("Access-Control-Allow-Credentials") == "true"
    preflight = http_request(container.port, "OPTIONS", "/api/items",
                             [("Origin", ORIGIN), ("Access-Control-Request-Method", "PUT")], host="api.test")
    assert preflight.status == 204 and "PUT" in preflight.value("Access-Control-Allow-Methods")
    denied = http_request(container.port, "GET", "/api/items", [("Origin", "https://evil.test")], host="api.test")
    assert denied.value("Access-Control-Allow-Origin") is None


def test_the_process_runs_as_the_unprivileged_user(container):
    status = container.exec("cat", "/proc/1/status").stdout
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M).groups()
    assert set(uids) == {"10001"}
    assert re.search(r"^CapEff:\s+0+$", status, re.M)  # no capabilities at all
    assert "coxp run -c /etc/coxp/coxp.toml --watch" in container.exec("cat", "/proc/1/cmdline").stdout.replace("\0", " ")


def test_the_image_has_uvloop_and_no_build_tools(container):
    assert container.exec("python3", "-c", "import uvloop, proxy.config").returncode == 0
    assert container.exec("test", "-e", "/opt/coxp/bin/pip", check=False).returncode != 0
    tools = container.exec("sh", "-c", "command -v gcc cc c++ make || true").stdout
    assert tools == ""


def test_the_healthcheck_command_succeeds(container, image):
    configured = json.loads(podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image).stdout)
    assert configured["Test"][1:] == ["coxp", "health", "-c", "/etc/coxp/coxp.toml"]
    assert podman("healthcheck", "run", container.name).returncode == 0


def test_the_root_filesystem_is_read_only_and_watch_still_reloads(container):
    assert container.exec("sh", "-c", "echo x > /opt/coxp/x", check=False).returncode != 0
    before = http_request(container.admin, "GET", "/metrics", host="localhost").body.decode()
    # An edit in place of the mounted file (a bind mount keeps the inode) is picked up by --watch.
    text = container.config.read_text().replace(ORIGIN, "https://new.example.test")
    with open(container.config, "r+") as file:
        file.write(text)
        file.truncate()
    wanted = hashlib.sha256(text.encode()).hexdigest()
    deadline = time.monotonic() + WAIT
    while f'coxp_config_info{{sha256="{wanted}"}} 1.0' not in (
            metrics := http_request(container.admin, "GET", "/metrics", host="localhost").body.decode()):
        assert time.monotonic() < deadline, f"not reloaded:\n{metrics}\n{container.logs()}"
        time.sleep(0.1)
    assert 'coxp_config_reloads_total{result="ok"} 1.0' in metrics and before != metrics
    reply = http_request(container.port, "GET", "/api/x", [("Origin", "https://new.example.test")], host="api.test")
    assert reply.value("Access-Control-Allow-Origin") == "https://new.example.test"


def test_sigterm_drains_the_request_in_flight_and_exits_0(container, query_upstream):
    import threading

    marker = unique()
    result = {}
    slow = threading.Thread(target=lambda: result.update(
        r=http_request(container.port, "GET", f"/api/slow?{marker}&sleep=1.5", [("Origin", ORIGIN)], host="api.test")))
    slow.start()
    deadline = time.monotonic() + WAIT
    while not query_upstream.saw(marker):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    podman("kill", "--signal", "TERM", container.name)
    slow.join(WAIT)
    assert (result["r"].status, result["r"].body) == (200, b"upstream GET")  # finished, not cut off
    assert podman("wait", container.name, timeout=30).stdout.strip() == "0"
    assert '"event":"listening"' in container.logs()


# --- Kubernetes manifests, run by `podman kube play` -------------------------------------------

K8S = REPO / "docker" / "k8s"


def _configmap_toml(text: str) -> str:
    """The TOML inside configmap.yaml (the block under `coxp.toml: |`)."""
    block = text.split("coxp.toml: |\n", 1)[1]
    return "".join(line[4:] if line.strip() else "\n" for line in block.splitlines(keepends=True))


def _for_this_host(name: str, upstream: str, port: int, admin: int, image: str, origin: str = ORIGIN) -> tuple[str, str]:
    """configmap.yaml and deployment.yaml as written, changed only where one machine's host
    network differs from a cluster: free ports instead of 8080/9901 (no port list: Podman
    rejects port mappings on the host network), this run's names and image, the test upstream,
    and one replica (two pods on one host network would want the same port)."""
    configmap = (K8S / "configmap.yaml").read_text()
    toml = _configmap_toml(configmap)
    new_toml = example_config(upstream, port, admin, toml.replace(ORIGIN, origin))
    configmap = configmap.replace("name: coxp-config", f"name: {name}-config")
    configmap = configmap.split("coxp.toml: |\n", 1)[0] + "coxp.toml: |\n" + "".join(
        f"    {line}" if line.strip() else line for line in new_toml.splitlines(keepends=True))
    deployment = (K8S / "deployment.yaml").read_text()
    changes = [
        ("\n  name: coxp\n", f"\n  name: {name}\n"),
        ("replicas: 2", "replicas: 1"),
        ("image: coxp\n", f"image: {image}\n"),
        ("port: admin", f"port: {admin}"),
        ("name: coxp-config", f"name: {name}-config"),
        ("- name: tmp\n", f"- name: {name}-tmp\n"),  # the mount and the volume
    ]
    for old, new in changes:
        assert old in deployment, old
        deployment = deployment.replace(old, new)
    deployment, ports = re.subn(r"\n          ports:\n(?:            - name: \w+\n              containerPort: \d+\n)+",
                                "\n", deployment)
    assert ports == 1
    return configmap, deployment


def test_the_configmap_toml_is_the_example_one_and_passes_check(tmp_path):
    toml = _configmap_toml((K8S / "configmap.yaml").read_text())
    path = tmp_path / "coxp.toml"
    path.write_text(toml)
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("api ")


def test_kube_play_runs_the_deployment_and_a_config_change_replayed_applies(image, query_upstream, tmp_path):
    name = f"{RUN}-kube-{next(_names)}"
    port, admin = free_port(), free_port()
    configmap_path, deployment_path = tmp_path / "configmap.yaml", tmp_path / "deployment.yaml"

    def play(origin: str, *flags: str) -> None:
        configmap, deployment = _for_this_host(name, query_upstream.url, port, admin, image, origin)
        configmap_path.write_text(configmap)
        deployment_path.write_text(deployment)
        podman("kube", "play", *flags, "--network", "host", "--configmap", str(configmap_path), str(deployment_path),
               timeout=120)

    def logs() -> str:
        return podman("pod", "logs", f"{name}-pod-0", check=False).stdout[-3000:]

    try:
        play(ORIGIN)
        wait_ready(admin, "the pod", logs)
        response = http_request(port, "GET", "/api/items", [("Origin", ORIGIN)], host="api.test")
        assert response.status == 200 and response.value("Access-Control-Allow-Origin") == ORIGIN
        inspect = json.loads(podman("inspect", f"{name}-pod-0-coxp").stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        assert inspect["Config"]["User"].startswith("10001")

        play("https://changed.example.test", "--replace")
        wait_ready(admin, "the replayed pod", logs)
        changed = http_request(port, "GET", "/api/items", [("Origin", "https://changed.example.test")], host="api.test")
        assert changed.value("Access-Control-Allow-Origin") == "https://changed.example.test"
        old = http_request(port, "GET", "/api/items", [("Origin", ORIGIN)], host="api.test")
        assert old.value("Access-Control-Allow-Origin") is None
    finally:
        if deployment_path.exists():
            podman("kube", "down", str(deployment_path), check=False, timeout=120)
        # kube play keeps the ConfigMap and emptyDir volumes as named volumes.
        podman("volume", "rm", "--force", f"{name}-config", f"{name}-tmp", check=False)


# --- static checks ------------------------------------------------------------------------------

def _tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_hadolint_accepts_the_dockerfile():
    result = subprocess.run([_tool("hadolint"), str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_manifests_validate_against_the_kubernetes_schemas():
    manifests = sorted(str(p) for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    result = subprocess.run([_tool("kubernetes-validate"), "--strict", "--quiet", *manifests],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {re.search(r"^kind: (\w+)", Path(p).read_text(), re.M).group(1) for p in manifests}
    assert kinds == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def test_yamllint_accepts_the_manifests_and_compose_file():
    result = subprocess.run([_tool("yamllint"), "--strict", "-c", str(REPO / "docker" / ".yamllint.yaml"),
                             str(REPO / "docker")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_every_manifest():
    text = (K8S / "kustomization.yaml").read_text()
    listed = re.findall(r"^  - (\S+\.yaml)$", text, re.M)
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_the_deployment_keeps_the_promised_settings():
    deployment = (K8S / "deployment.yaml").read_text()
    for setting in ("replicas: 2", "path: /readyz", "path: /healthz", "readOnlyRootFilesystem: true",
                    "runAsNonRoot: true", "allowPrivilegeEscalation: false", 'drop: ["ALL"]', "preStop:",
                    '"--watch"'):
        assert setting in deployment, setting
    grace = int(re.search(r"terminationGracePeriodSeconds: (\d+)", deployment).group(1))
    pre_stop = int(re.search(r'command: \["sleep", "(\d+)"\]', deployment).group(1))
    from proxy.server import DRAIN_SECONDS

    assert grace > pre_stop + DRAIN_SECONDS


def test_the_compose_example_config_passes_check():
    result = run_cli("check", "-c", str(REPO / "docker" / "coxp.toml"))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    compose = (REPO / "docker" / "compose.yaml").read_text()
    assert "./coxp.toml:/etc/coxp/coxp.toml:ro" in compose and "./legacy:/srv:ro" in compose
    assert (REPO / "docker" / "legacy" / "api" / "items.json").exists()
