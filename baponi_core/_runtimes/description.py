"""``runtime.json``: what an import found out about an image, read back by every server."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from baponi_core._sandbox.image import DESCRIPTION, Runtime
from baponi_core._sandbox.rootfs import HOME

MAX_BYTES = 1 << 20  # far more than any description holds


class Description(BaseModel):
    """One generation of a runtime, as ``baponi runtimes import`` wrote it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str  # what it was imported from, for the operator
    created_at: float
    host: bool = False  # the host's /usr, no root of its own
    env: dict[str, str] = Field(default_factory=dict)  # the image's Env
    workdir: str = HOME  # the image's WorkingDir, else the home
    interpreters: dict[str, list[str]] = Field(default_factory=dict)  # argv prefix by language
    entrypoint: list[str] = Field(default_factory=list)  # the image's, recorded only
    size: int = 0  # bytes its root takes on disk

    def write(self, generation: Path) -> None:
        (generation / DESCRIPTION).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, generation: Path) -> Description:
        """Raises OSError or pydantic's ValidationError for a missing or damaged one."""
        with open(generation / DESCRIPTION, "rb") as file:
            return cls.model_validate_json(file.read(MAX_BYTES))

    def runtime(self, name: str, generation: Path) -> Runtime:
        return Runtime(
            name=name,
            directory=generation,
            host=self.host,
            env=tuple(sorted(self.env.items())),
            workdir=self.workdir,
            interpreters=tuple(sorted((k, tuple(v)) for k, v in self.interpreters.items())),
            entrypoint=tuple(self.entrypoint),
        )
