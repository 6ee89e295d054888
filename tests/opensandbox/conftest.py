from __future__ import annotations

from collections.abc import Iterator

import pytest

from baponi_core._sandboxes.live import Live
from tests.opensandbox.live import Sandboxes, live_sandboxes


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandboxes]:
    yield from live_sandboxes(tmp_path_factory.mktemp("live-runtime"))


@pytest.fixture()
def live(sandboxes: Sandboxes) -> Iterator[Live]:
    """A sandbox of its own for each test, closed after it."""
    made = sandboxes.make()
    try:
        yield made
    finally:
        sandboxes.call(made.handle.close)
