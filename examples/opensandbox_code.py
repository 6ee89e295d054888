"""Code contexts through the official `opensandbox-code-interpreter` SDK, unmodified,
against a local server: a Jupyter kernel inside a long-lived sandbox keeps its variables
between runs, uses pandas, draws a matplotlib figure (an image/png result, read
here over raw HTTP: the SDK keeps only the text), and reports an exception.

    scripts/setup.sh serve            # in one terminal: prints a first API key
    OPEN_SANDBOX_API_KEY=sk-local-... .venv/bin/python examples/opensandbox_code.py

Set OPEN_SANDBOX_DOMAIN if the server is not on http://127.0.0.1:8080/opensandbox.
"""

from __future__ import annotations

import base64
import json
import os

import httpx
from code_interpreter import CodeInterpreterSync
from opensandbox import SandboxSync
from opensandbox.config.connection_sync import ConnectionConfigSync

domain = os.environ.get("OPEN_SANDBOX_DOMAIN", "http://127.0.0.1:8080/opensandbox")
config = ConnectionConfigSync(domain=domain)  # the key: $OPEN_SANDBOX_API_KEY

sandbox = SandboxSync.create("default", connection_config=config)
try:
    interpreter = CodeInterpreterSync.create(sandbox)  # waits for its kernel's port
    context = interpreter.codes.create_context("python")
    interpreter.codes.run("import pandas as pd\nprices = [3, 1, 4, 1, 5]", context=context)
    total = interpreter.codes.run("sum(prices)", context=context)
    print(f"sum: {total.result[0].text} (run {total.execution_count})")
    mean = interpreter.codes.run("float(pd.Series(prices).mean())", context=context)
    print(f"mean: {mean.result[0].text}")
    failed = interpreter.codes.run("prices[10]", context=context)
    assert failed.error is not None
    print(f"error: {failed.error.name}: {failed.error.value}")

    # The whole MIME map of a result is on the stream: the figure as base64 PNG.
    endpoint = sandbox.get_endpoint(44772)
    url = f"{config.protocol}://{endpoint.endpoint}/code"
    plot = "import matplotlib.pyplot as plt\nplt.plot(prices)\nplt.show()"
    body = {"code": plot, "context": {"id": context.id, "language": "python"}}
    with httpx.stream("POST", url, json=body, headers=endpoint.headers, timeout=60) as stream:
        events = [json.loads(line) for line in stream.iter_lines() if line.strip()]
    [png] = [e["results"]["image/png"] for e in events if "image/png" in e.get("results", {})]
    print(f"figure: {len(base64.b64decode(png))} bytes of PNG")
finally:
    sandbox.kill()
