"""Errors with a one-line message for the user: config problems (each naming its TOML key path, all
reported together) and a listener that cannot be bound."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    key: str  # e.g. "routes[1].cors.allow_origins[0]"; "" for file-level problems (syntax, I/O)
    message: str

    def render(self, source: str) -> str:
        return f"{source}: {self.key}: {self.message}" if self.key else f"{source}: {self.message}"

    def render_warning(self, source: str) -> str:
        """`FILE: KEY.PATH: warning: message`, as `coxp check` prints a warning."""
        return f"{source}: {self.key}: warning: {self.message}" if self.key else f"{source}: warning: {self.message}"


class ConfigError(Exception):
    """Raised by `proxy.config.load_config` with every problem found, never just the first."""

    def __init__(self, source: str, problems: list[ConfigProblem]):
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [p.render(self.source) for p in self.problems]


class ListenError(OSError):
    """A listen address that cannot be bound (in use, not local, no permission): `coxp run` prints
    this one line and exits 1."""

    def __init__(self, error: OSError, listen: object, what: str = "listen") -> None:
        super().__init__(error.errno, f"cannot {what} on {listen}: {error.strerror or error}")
