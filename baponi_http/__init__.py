"""The HTTP adapter: maps Baponi's REST API onto the core services."""

from baponi_http.app import create_app

__all__ = ["create_app"]
