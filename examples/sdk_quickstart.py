"""Run code through the official `baponi` SDK against a local server.

    scripts/setup.sh serve            # in one terminal: prints a first API key
    BAPONI_API_KEY=sk-local-... .venv/bin/python examples/sdk_quickstart.py

Set BAPONI_BASE_URL if the server is not on http://127.0.0.1:8080.
"""

from __future__ import annotations

import os
import warnings

from baponi import Baponi

warnings.filterwarnings("ignore", message="Base URL")  # plain HTTP is fine on loopback

client = Baponi(base_url=os.environ.get("BAPONI_BASE_URL", "http://127.0.0.1:8080"))

result = client.execute("import sys; print(f'hello from Python {sys.version_info[:2]}')")
print(result.stdout, end="")

result = client.execute(
    'echo "$GREETING from $(uname -n)"', language="bash", env_vars={"GREETING": "hello"}
)
print(result.stdout, end="")

result = client.execute("console.log([1, 2, 3].map((x) => x * 2))", language="node")
print(result.stdout, end="")

# A thread keeps /home/baponi between executions.
client.execute("open('notes.txt', 'w').write('remember me')", thread_id="quickstart")
print(client.execute("print(open('notes.txt').read())", thread_id="quickstart").stdout, end="")

# Failures come back as results, not exceptions.
result = client.execute("import time; time.sleep(5)", timeout=1)
print(f"success={result.success} error={result.error}")
