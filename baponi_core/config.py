"""Server settings: where state lives and how the server listens."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8080


def default_home() -> Path:
    return Path(os.environ.get("BAPONI_HOME") or Path.home() / ".baponi").expanduser()


@dataclass(frozen=True)
class Settings:
    """Everything lives under ``home``: the SQLite database, thread homes, runtime files."""

    home: Path
    sandbox_uid: int = 64000  # the unprivileged host uid sandboxes run as when we are root

    @property
    def database(self) -> Path:
        return self.home / "baponi.db"

    @property
    def threads(self) -> Path:
        return self.home / "threads"

    @property
    def runtime(self) -> Path:
        return self.home / "run"

    @classmethod
    def at(cls, home: str | Path | None = None) -> Settings:
        return cls(home=Path(home).expanduser().resolve() if home else default_home().resolve())
