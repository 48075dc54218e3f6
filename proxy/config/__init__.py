"""Load, validate and compile the TOML configuration into `proxy.model` objects.

Validation never stops at the first mistake: every check appends to one report, and a single
`ConfigError` lists all problems, each under its TOML key path. Checks normalise as they go and
precompute header values, so the request path never looks at raw configuration.

The package, bottom to top: `reading` (TOML, the problem report, typed reads under a key path),
`values` (one configured string to one value), `cors` and `policies` (the policy tables and
their one registry, `policies.HEADER_TABLES`), `sections` (`[proxy]`, `[admin]`, `[log]`,
`[limits]`, `[[routes]]` and the whole file), `summary` (`coxp check`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from typing import Any

from proxy.config.reading import Report, merged, parse_toml
from proxy.config.sections import compile_config
from proxy.config.summary import summarize
from proxy.errors import ConfigError, ConfigProblem
from proxy.model import Config

__all__ = ["load_config", "load_config_text", "summarize"]


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


def load_config_text(text: str, source: str = "<string>", overrides: Mapping[str, Any] | None = None,
                     base_dir: str | None = None) -> Config:
    """Like `load_config`, from a string; relative file paths are resolved against `base_dir`
    (default: the current directory)."""
    return _load(text, source, base_dir or os.getcwd(), overrides)


def _load(text: str, source: str, base_dir: str, overrides: Mapping[str, Any] | None) -> Config:
    data = parse_toml(text, source)
    if overrides:
        data = merged(data, overrides)
    report = Report()
    config = compile_config(report, data, source, base_dir)
    if report.errors:
        raise ConfigError(source, report.errors)
    # UTF-8 decoding and encoding round-trip exactly: this is the hash of the file's bytes.
    return dataclasses.replace(config, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())
