"""Operator actions on runtimes: list them with the profiles that use them, import one,
delete one that no profile names."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from baponi_core._errors import Conflict
from baponi_core._runtimes import Description, Runtimes, import_runtime
from baponi_core._services.admin import check_name
from baponi_core._store import Store


def import_image(runtimes: Runtimes, name: str, source: str, replace: bool = False) -> Description:
    """Make ``source`` (an image, or ``host:``) the runtime ``name``; a replace leaves
    running sandboxes on the generation they have. Blocking, and long for a big image."""
    check_name("runtime", name)
    return import_runtime(runtimes, name, source, replace)


@dataclass(frozen=True)
class Listed:
    name: str
    generation: str
    description: Description
    profiles: tuple[str, ...]  # org/profile of each profile naming it


class RuntimeAdmin:
    def __init__(self, store: Store, runtimes: Runtimes) -> None:
        self.store = store
        self.runtimes = runtimes

    async def list(self) -> list[Listed]:
        users = await self.store.profiles_by_runtime()
        entries = await anyio.to_thread.run_sync(self.runtimes.entries)
        return [
            Listed(e.name, e.generation, e.description, tuple(users.get(e.name, ())))
            for e in entries
        ]

    async def delete(self, name: str) -> None:
        """Delete ``name`` unless a profile names it (409); its files go once no sandbox
        uses them."""
        users = (await self.store.profiles_by_runtime()).get(name)
        if users:
            raise Conflict(f"runtime {name} is used by profile(s) {', '.join(users)}")
        await anyio.to_thread.run_sync(self.runtimes.delete, name)
