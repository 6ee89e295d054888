"""Real object-store emulators on 127.0.0.1 for the storage tests (session-scoped fixtures).

- ``s3_emulator``: moto's S3 server (in-process thread).
- ``gcs_emulator``: gcp-storage-emulator (in-process thread) plus a loopback OAuth token
  endpoint, so service-account credentials refresh without reaching Google.
- ``azure_emulator``: Azurite (``node_modules/.bin/azurite-blob``, a subprocess); it checks
  SAS signatures, expiry and permissions for real.

Each yields an ``Emulator``; ``options`` are JSON-serialisable fsspec storage options that a
server subprocess can receive as-is (it also needs ``env``). Registered for every test module
by ``pytest_plugins`` in tests/conftest.py.
The fixtures wrap the context managers ``start_s3()``, ``start_gcs(work)`` and
``start_azure(work)``, which benchmarks use outside pytest.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, free_port

# gcsfs picks its class at import time; the default one probes every bucket over gRPC, which
# an emulator never answers (60 s hang). Set before anything imports gcsfs.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
BUCKET = "baponi-test"
PREFIX = "baponi"
# Azurite's fixed, publicly documented development account.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Emulator:
    """One running emulator with a bucket (container) named ``bucket``."""

    protocol: str  # fsspec protocol: "s3", "gs", "az"
    bucket: str
    endpoint: str  # e.g. "http://127.0.0.1:41234"
    options: dict[str, Any]  # fsspec storage options, JSON-serialisable
    env: dict[str, str] = field(default_factory=dict)  # for a server subprocess

    @property
    def url(self) -> str:
        """A storage root inside the bucket, e.g. "s3://baponi-test/baponi"."""
        return f"{self.protocol}://{self.bucket}/{PREFIX}"

    def fresh_url(self) -> str:
        """A root no other test uses (the emulators live for the whole session)."""
        return f"{self.protocol}://{self.bucket}/{secrets.token_hex(6)}"

    def fs(self) -> Any:
        import fsspec

        return fsspec.filesystem(self.protocol, **self.options)


def random_bytes(size: int) -> bytes:
    """Random bytes that do not end in CR: gcp-storage-emulator drops a trailing b"\\r" from
    every simple upload (b"x\\r" is stored as b"x"), which real GCS does not."""
    return os.urandom(size - 1) + b"." if size else b""


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"storage emulator needs {', '.join(missing)} (pip install -e '.[dev]')")


def _wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"emulator not listening on 127.0.0.1:{port} after {START_TIMEOUT} s")


# --- S3 ------------------------------------------------------------------------------------


@contextlib.contextmanager
def start_s3() -> Iterator[Emulator]:
    """moto S3 on 127.0.0.1 with bucket "baponi-test"; keys "testing"/"testing"."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        emulator = Emulator(
            protocol="s3",
            bucket=BUCKET,
            endpoint=endpoint,
            options={
                "key": "testing",
                "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint},
                # botocore presigns with SigV2 unless told otherwise.
                "config_kwargs": {"signature_version": "s3v4"},
            },
            # The region goes in the environment: as client_kwargs it makes bucket creation
            # send a LocationConstraint that us-east-1 refuses.
            env={
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        )
        emulator.fs().mkdir(BUCKET)
        yield emulator
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_emulator() -> Iterator[Emulator]:
    """moto S3 on 127.0.0.1 with bucket "baponi-test"; keys "testing"/"testing"."""
    _need("moto", "s3fs")
    with start_s3() as emulator:
        yield emulator


# --- GCS -----------------------------------------------------------------------------------


class _TokenHandler(BaseHTTPRequestHandler):
    """OAuth token endpoint for the service account's JWT grant; the emulator ignores the
    token, but google-auth insists on fetching one before the first request."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {"access_token": "emulator", "expires_in": 3600, "token_type": "Bearer"}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _service_account(token_uri: str) -> dict[str, str]:
    """A throwaway service account: gcsfs signs v4 URLs locally with its RSA key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": BUCKET,
        "private_key_id": secrets.token_hex(8),
        "private_key": pem,
        "client_email": f"signer@{BUCKET}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }


@contextlib.contextmanager
def start_gcs(work: Path) -> Iterator[Emulator]:
    """gcp-storage-emulator on 127.0.0.1 with bucket "baponi-test"; ``options["token"]`` is
    a throwaway service-account key file (written in ``work``), so the same options can sign
    v4 URLs."""
    from gcp_storage_emulator.server import create_server

    tokens = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    key_file = work / "service-account.json"
    token_uri = f"http://127.0.0.1:{tokens.server_address[1]}/token"
    key_file.write_text(json.dumps(_service_account(token_uri)))
    key_file.chmod(0o600)

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    # It serves one connection at a time from the stdlib's backlog of 5: clients with many
    # requests in flight (as sync makes) would see connects dropped and retried for seconds.
    server._api._httpd.socket.listen(128)
    try:
        yield Emulator(
            protocol="gs",
            bucket=BUCKET,
            endpoint=f"http://127.0.0.1:{port}",
            options={
                "endpoint_url": f"http://127.0.0.1:{port}",
                "token": str(key_file),
                "project": BUCKET,
            },
            env={"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"},
        )
    finally:
        server.stop()
        tokens.shutdown()
        tokens.server_close()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """gcp-storage-emulator on 127.0.0.1 with bucket "baponi-test"; ``options["token"]`` is
    a throwaway service-account key file, so the same options can sign v4 URLs."""
    _need("gcp_storage_emulator", "gcsfs", "cryptography")
    import gcsfs

    if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
        pytest.fail("gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set")
    with start_gcs(tmp_path_factory.mktemp("gcs")) as emulator:
        yield emulator


# --- Azure Blob ----------------------------------------------------------------------------


@contextlib.contextmanager
def start_azure(work: Path) -> Iterator[Emulator]:
    """Azurite (blob) on 127.0.0.1 with container "baponi-test", devstoreaccount1 key; its
    log and any stray file go in ``work``."""
    from azure.storage.blob import BlobServiceClient

    log = work / "azurite.log"
    port = free_port()
    # --skipApiVersionCheck: azure-storage-blob sends a newer x-ms-version than Azurite knows.
    args = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port)]
    args += ["--inMemoryPersistence", "--disableTelemetry"]  # cwd=work catches any stray file
    args += ["--skipApiVersionCheck", "--silent"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=work, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        _wait_for_port(port, proc, log)
        endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
        )
        with BlobServiceClient.from_connection_string(connection_string) as client:
            client.create_container(BUCKET)
        yield Emulator(
            protocol="az",
            bucket=BUCKET,
            endpoint=endpoint,
            options={"connection_string": connection_string},
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def azure_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Azurite (blob) on 127.0.0.1 with container "baponi-test", devstoreaccount1 key."""
    _need("adlfs", "azure.storage.blob")
    if not os.access(AZURITE, os.X_OK):
        pytest.skip(f"{AZURITE} missing (run `npm ci` at the repository root)")
    with start_azure(tmp_path_factory.mktemp("azurite")) as emulator:
        yield emulator
