"""The operator's commands, ``baponi`` and ``baponi-mcp``: the composition root, where
settings are read from the command line and the core and its adapters are put together.
Nothing imports this package."""
