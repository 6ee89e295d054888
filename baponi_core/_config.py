"""Server settings: where state lives and how the server listens."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baponi_core._sandbox.pool import PoolSizes
from baponi_core._sandbox.uids import DEFAULT_UIDS, UidRange

DEFAULT_PORT = 8080
DEFAULT_THREAD_QUOTA = 10 << 30  # 10 GiB: one file of the largest size an upload may have
# 1 TiB: more than the disk of most servers, so that a volume without a quota is bounded
# by the disk as before; its filesystem costs 13 MiB of the host's disk and 0.1 s to make.
DEFAULT_VOLUME_SIZE = 1 << 40
NO_POOL = PoolSizes.parse("0")
RETRY_DELAYS_S = (5.0, 30.0, 120.0, 600.0, 1800.0)  # webhook tries: six over about 43 min


def default_home() -> Path:
    return Path(os.environ.get("BAPONI_HOME") or Path.home() / ".baponi").expanduser()


def default_runtimes(home: Path) -> Path:
    """``$BAPONI_RUNTIMES`` (one directory shared by many homes), else the home's own."""
    named = os.environ.get("BAPONI_RUNTIMES")
    return Path(named).expanduser() if named else home / "runtimes"


@dataclass(frozen=True)
class Settings:
    """Everything lives under ``home``: the SQLite database, thread homes, runtime files."""

    home: Path
    sandbox_uids: UidRange = DEFAULT_UIDS  # host uids for sandboxes, one each, when we are root
    allow_private_webhooks: bool = False  # let webhooks reach private/loopback addresses
    allow_private_egress: bool = False  # tests only: sandboxes' egress to private addresses
    webhook_ca_file: Path | None = None  # extra CAs trusted for webhook targets
    webhook_retry_delays: tuple[float, ...] = RETRY_DELAYS_S
    shutdown_grace_s: float = 30.0  # how long running executions may finish at shutdown
    public_url: str | None = None  # base of signed URLs; default: the URL the client used
    storage_url: str | None = None  # thread homes and volumes: a directory (default: home)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options, for clouds
    thread_quota_bytes: int = DEFAULT_THREAD_QUOTA  # what one thread home may hold
    volume_size_bytes: int = DEFAULT_VOLUME_SIZE  # the filesystem of a volume without a quota
    sampled_quota: bool = False  # homes as directories, sized by sampling, even as root
    retention_sweep_s: float = 3600.0  # how often executions past their retention are deleted
    runtimes_dir: Path | None = None  # the runtimes sandboxes run on (default_runtimes)
    # Sandboxes prepared ahead (root only): off unless asked for (baponi serve asks for
    # pool.DEFAULT_SPEC), so that an embedding program spends nothing it did not choose.
    pool: PoolSizes = NO_POOL
    sandboxes_per_org: int = 10  # long-lived sandboxes alive at once, per organisation
    sandboxes_per_server: int = 50  # and on the whole server
    sandbox_max_lifetime_s: float = 86400.0  # the longest a long-lived sandbox may live
    sandbox_idle_s: float = 1800.0  # one with no request and no command for this long ends
    sandbox_paused_time_counts: bool = False  # a paused sandbox's expiry comes all the same

    def base_url(self, seen: str) -> str:
        """Where signed URLs point: ``public_url``, else the URL the client used."""
        return self.public_url or seen

    @property
    def database(self) -> Path:
        return self.home / "baponi.db"

    @property
    def signing_keys(self) -> Path:
        return self.home / "signing.keys"

    @property
    def runtimes(self) -> Path:
        return self.runtimes_dir or default_runtimes(self.home)

    @property
    def connector_keys(self) -> Path:
        """The keys connector values are sealed with: back it up with the database."""
        return self.home / "connectors.keys"

    @property
    def runtime(self) -> Path:
        return self.home / "run"

    @classmethod
    def at(cls, home: str | Path | None = None, **options: Any) -> Settings:
        where = Path(home).expanduser() if home else default_home()
        return cls(home=where.resolve(), **options)
