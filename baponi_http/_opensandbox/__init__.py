"""The OpenSandbox APIs over the core's long-lived sandboxes: the lifecycle API and, for
each sandbox, its execd API, both under ``/opensandbox`` (docs/opensandbox.md)."""

from baponi_http._opensandbox.routes import opensandbox_mount

__all__ = ["opensandbox_mount"]
