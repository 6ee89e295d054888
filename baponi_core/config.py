"""Server settings: where state lives and how the server listens."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8080
RETRY_DELAYS_S = (5.0, 30.0, 120.0, 600.0, 1800.0)  # webhook tries: six over about 43 min


def default_home() -> Path:
    return Path(os.environ.get("BAPONI_HOME") or Path.home() / ".baponi").expanduser()


@dataclass(frozen=True)
class Settings:
    """Everything lives under ``home``: the SQLite database, thread homes, runtime files."""

    home: Path
    sandbox_uid: int = 64000  # the unprivileged host uid sandboxes run as when we are root
    allow_private_webhooks: bool = False  # let webhooks reach private/loopback addresses
    webhook_ca_file: Path | None = None  # extra CAs trusted for webhook targets
    webhook_retry_delays: tuple[float, ...] = RETRY_DELAYS_S
    shutdown_grace_s: float = 30.0  # how long running executions may finish at shutdown
    public_url: str | None = None  # base of signed URLs; default: the URL the client used

    @property
    def database(self) -> Path:
        return self.home / "baponi.db"

    @property
    def threads(self) -> Path:
        return self.home / "threads"

    @property
    def signing_keys(self) -> Path:
        return self.home / "signing.keys"

    @property
    def runtime(self) -> Path:
        return self.home / "run"

    @classmethod
    def at(cls, home: str | Path | None = None, **options: Any) -> Settings:
        where = Path(home).expanduser() if home else default_home()
        return cls(home=where.resolve(), **options)
