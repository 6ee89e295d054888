"""Transport-agnostic core of the Baponi self-hosted sandbox."""
