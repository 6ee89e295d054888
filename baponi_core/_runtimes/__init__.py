"""Runtimes: the root filesystems sandboxes run on, kept as files in a runtimes directory
shared by every server that names it (:mod:`registry`), made from OCI images or the host
(:mod:`importer`). What one generation is to a sandbox: :mod:`baponi_core._sandbox.image`."""

from baponi_core._runtimes.description import Description
from baponi_core._runtimes.importer import import_runtime
from baponi_core._runtimes.registry import Entry, Runtimes

__all__ = ["Description", "Entry", "Runtimes", "import_runtime"]
