"""The seed's "complete workflow": upload an input, run code on it, download the output.

    scripts/setup.sh serve            # in one terminal: prints a first API key
    BAPONI_API_KEY=sk-local-... .venv/bin/python examples/files_roundtrip.py

Set BAPONI_BASE_URL if the server is not on http://127.0.0.1:8080.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings

import httpx
from baponi import Baponi

warnings.filterwarnings("ignore", message="Base URL")  # plain HTTP is fine on loopback

BASE_URL = os.environ.get("BAPONI_BASE_URL", "http://127.0.0.1:8080")
client = Baponi(base_url=BASE_URL)
thread = f"analysis-{uuid.uuid4().hex[:8]}"

# 1. Upload the input straight to the thread through a signed URL.
data = json.dumps({"values": [1, 2, 3, 4, 5]}).encode()
upload = client.upload_url(
    path="input.json", id=thread, content_length=len(data), content_type="application/json"
)
headers = {header.name: header.value for header in upload.headers}  # a list of name/value
httpx.put(upload.url, headers=headers, content=data).raise_for_status()

# 2. Run code in the thread: it sees the file in its home, /home/baponi.
result = client.execute(
    """
import json, os
values = json.load(open("input.json"))["values"]
os.makedirs("results", exist_ok=True)
json.dump({"sum": sum(values), "mean": sum(values) / len(values)}, open("results/output.json", "w"))
print("done")
""",
    thread_id=thread,
)
print(result.stdout, end="")

# 3. See what is there, and download the output.
for entry in client.list_files(id=thread):  # the SDK keeps path, size and modified
    print(f"  {entry.size:>4} {entry.path}")
download = client.download_url(path="results/output.json", id=thread)
print(httpx.get(download.url).json())

# 4. Delete it (the SDK has no method for this one: plain HTTP).
key = os.environ["BAPONI_API_KEY"]
api = httpx.Client(base_url=BASE_URL, headers={"Authorization": f"Bearer {key}"})
print(api.request("DELETE", "/v1/files", json={"id": thread, "path": "results/output.json"}).json())
