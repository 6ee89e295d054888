"""Logging for the commands: one configuration, made here rather than by the libraries
that would otherwise change it behind the operator's back."""

from __future__ import annotations

import logging
import sys

# At INFO it logs every request's headers, signed URLs and credentials included.
QUIETER = ("azure.core.pipeline.policies.http_logging_policy",)


def configure(level: str, format: str) -> None:
    """Log at ``level`` on stderr (never stdout: baponi-mcp speaks JSON-RPC there)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=format)
    for name in QUIETER:
        logging.getLogger(name).setLevel(logging.WARNING)
