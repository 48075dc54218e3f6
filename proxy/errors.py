"""Configuration errors: each names the TOML key path it is about, all are reported together."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    key: str  # e.g. "routes[1].cors.allow_origins[0]"; "" for file-level problems (syntax, I/O)
    message: str

    def render(self, source: str) -> str:
        return f"{source}: {self.key}: {self.message}" if self.key else f"{source}: {self.message}"


class ConfigError(Exception):
    """Raised by `proxy.config.load_config` with every problem found, never just the first."""

    def __init__(self, source: str, problems: list[ConfigProblem]):
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [p.render(self.source) for p in self.problems]
