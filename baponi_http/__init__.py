"""The HTTP adapter: maps Baponi's REST API onto the core services (see ``baponi_http.app``)."""
