"""Loopback upstreams for egress tests and benchmarks: an HTTP(S) server on 127.0.0.1,
and the packages it serves (a wheel and an npm tarball, built here, never downloaded)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import ssl
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

# Sandboxes set NO_PROXY for their own loopback; code reaching the host's loopback
# (these upstreams) through the proxy clears it first.
UNPROXIED_BASH = "unset no_proxy NO_PROXY npm_config_noproxy\n"
UNPROXIED_PYTHON = (
    "import os\nfor name in ('no_proxy', 'NO_PROXY'):\n    os.environ.pop(name, None)\n"
)
HELLO = b"hello from upstream"
PACKAGE = "egress-probe"
MODULE = "egress_probe"
MARK = "installed through the proxy"
BLOB_CHUNK = 1 << 20


class Upstream:
    """An HTTP (or HTTPS) server on 127.0.0.1 serving ``files`` by path (and ``/blob``);
    every request's path is recorded."""

    def __init__(
        self,
        files: dict[str, tuple[str, bytes]],
        ca: trustme.CA | None = None,
        blob_bytes: int = 0,
    ) -> None:
        self.files = files
        self.blob_bytes = blob_bytes  # what /blob streams
        self.paths: list[str] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                upstream.paths.append(self.path)
                if self.path == "/blob":
                    self._blob()
                    return
                found = upstream.files.get(self.path.split("?")[0])
                kind, body = found or ("text/plain", b"not found")
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _blob(self) -> None:
                """``blob_bytes`` of zeros, streamed."""
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(upstream.blob_bytes))
                self.end_headers()
                chunk = bytes(BLOB_CHUNK)
                left = upstream.blob_bytes
                while left > 0:
                    self.wfile.write(chunk[: min(left, BLOB_CHUNK)])
                    left -= BLOB_CHUNK

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hello", host: str = "127.0.0.1") -> str:
        scheme = "https" if isinstance(self.server.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def build_wheel() -> tuple[str, bytes]:
    """A pure-Python wheel of ``egress-probe`` 1.0, made here: its file name and bytes."""
    dist = f"{MODULE}-1.0.dist-info"
    files = {
        f"{MODULE}/__init__.py": f"MARK = {MARK!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return f"{MODULE}-1.0-py3-none-any.whl", out.getvalue()


def build_npm_package() -> bytes:
    """The tarball of npm package ``egress-probe`` 1.0.0, made here."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in (
            ("package.json", json.dumps({"name": PACKAGE, "version": "1.0.0", "main": "index.js"})),
            ("index.js", f"module.exports = {json.dumps(MARK)};\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def package_files(port: int) -> dict[str, tuple[str, bytes]]:
    """What the upstream serves: /hello, a PEP 503 index with the wheel, an npm registry."""
    wheel_name, wheel = build_wheel()
    tarball = build_npm_package()
    tarball_url = f"http://127.0.0.1:{port}/{PACKAGE}/-/{PACKAGE}-1.0.0.tgz"
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    metadata = {
        "name": PACKAGE,
        "dist-tags": {"latest": "1.0.0"},
        "versions": {
            "1.0.0": {
                "name": PACKAGE,
                "version": "1.0.0",
                "main": "index.js",
                "dist": {
                    "tarball": tarball_url,
                    "shasum": hashlib.sha1(tarball).hexdigest(),
                    "integrity": integrity,
                },
            }
        },
    }
    wheel_hash = hashlib.sha256(wheel).hexdigest()
    index = f'<a href="/packages/{wheel_name}#sha256={wheel_hash}">{wheel_name}</a>'
    return {
        "/hello": ("text/plain", HELLO),
        f"/simple/{PACKAGE}/": ("text/html", index.encode()),
        f"/packages/{wheel_name}": ("application/octet-stream", wheel),
        f"/{PACKAGE}": ("application/json", json.dumps(metadata).encode()),
        f"/{PACKAGE}/-/{PACKAGE}-1.0.0.tgz": ("application/octet-stream", tarball),
    }
