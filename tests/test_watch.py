"""`coxp run --watch`: a changed config file is reloaded as on SIGHUP, however it was changed."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from harness import Coxp

ORIGIN = "https://app.example.test"
CONFIG = """
[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"
[log]
format = "json"
[[routes]]
name = "api"
[routes.cors]
allow_origins = ["{origin}"]
"""


def config(upstream: str, origin: str = ORIGIN) -> str:
    return CONFIG.replace("{upstream}", upstream).replace("{origin}", origin)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def watched(tmp_path, query_upstream):
    """Factory: run `coxp run -c PATH --watch` on a file already written; stopped after the test."""
    started: list[Coxp] = []

    def start(path: Path) -> Coxp:
        started.append(Coxp(["-m", "proxy", "run", "-c", str(path), "--watch"], cwd=tmp_path, config_path=path).start())
        assert started[-1].events[0]["watch"] is True
        return started[-1]

    yield start
    for process in started:
        process.stop()


def allowed(proxy: Coxp, origin: str) -> str | None:
    return proxy.request("GET", "/x", [("Origin", origin)]).value("Access-Control-Allow-Origin")


def test_a_file_renamed_over_the_config_is_reloaded(watched, tmp_path, query_upstream):
    path = tmp_path / "coxp.toml"
    path.write_text(config(query_upstream.url))
    proxy = watched(path)
    mark = proxy.mark()
    new = config(query_upstream.url, "https://new.example.test")
    (tmp_path / "coxp.toml.tmp").write_text(new)
    os.rename(tmp_path / "coxp.toml.tmp", path)  # how editors save
    assert proxy.wait_event("config_reloaded", start=mark)["sha256"] == sha256(new)
    assert allowed(proxy, "https://new.example.test") == "https://new.example.test"
    assert allowed(proxy, ORIGIN) is None


def test_an_invalid_file_keeps_the_old_config_until_it_is_fixed(watched, tmp_path, query_upstream):
    path = tmp_path / "coxp.toml"
    path.write_text(config(query_upstream.url))
    proxy = watched(path)
    mark = proxy.mark()
    path.write_text(config(query_upstream.url, "https://bad.example.test/path"))  # written in place
    errors = proxy.wait_event("config_error", start=mark)["errors"]
    assert any("routes[0].cors.allow_origins[0]" in line for line in errors)
    assert allowed(proxy, ORIGIN) == ORIGIN
    assert not proxy.events_named("config_reloaded", start=mark)

    fixed = config(query_upstream.url, "https://fixed.example.test")
    path.write_text(fixed)
    assert proxy.wait_event("config_reloaded", start=mark)["sha256"] == sha256(fixed)
    assert allowed(proxy, "https://fixed.example.test") == "https://fixed.example.test"


def _configmap_generation(volume: Path, name: str, text: str) -> None:
    """Publish `text` the way the kubelet updates a ConfigMap volume: a new timestamped
    directory, a `..data_tmp` symlink to it renamed over `..data` (atomic), the old one removed."""
    generation = volume / name
    generation.mkdir()
    (generation / "coxp.toml").write_text(text)
    previous = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    os.symlink(name, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", volume / "..data")
    if not (volume / "coxp.toml").is_symlink():
        os.symlink("..data/coxp.toml", volume / "coxp.toml")
    if previous is not None:
        shutil.rmtree(volume / previous)


def test_a_configmap_volume_update_is_reloaded(watched, tmp_path, query_upstream):
    volume = tmp_path / "volume"
    volume.mkdir()
    _configmap_generation(volume, "..2026_12_01_00_00_00.1", config(query_upstream.url))
    proxy = watched(volume / "coxp.toml")
    assert allowed(proxy, ORIGIN) == ORIGIN

    mark = proxy.mark()
    new = config(query_upstream.url, "https://second.example.test")
    _configmap_generation(volume, "..2026_12_01_00_01_00.2", new)
    assert proxy.wait_event("config_reloaded", start=mark)["sha256"] == sha256(new)
    assert allowed(proxy, "https://second.example.test") == "https://second.example.test"

    mark = proxy.mark()
    third = config(query_upstream.url, "https://third.example.test")
    _configmap_generation(volume, "..2026_12_01_00_02_00.3", third)  # the watch survives the swap
    assert proxy.wait_event("config_reloaded", start=mark)["sha256"] == sha256(third)
    assert len(proxy.events_named("config_reloaded", start=mark)) == 1
