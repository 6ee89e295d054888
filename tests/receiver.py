"""A webhook receiver for tests: HTTPS on 127.0.0.1 with a throwaway CA (trustme)."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def signed_by(self, secret: str, tolerance_s: float = 300) -> bool:
        """Check ``Baponi-Signature: t=<unix>,v1=<hex>`` as a receiver should."""
        parts = dict(p.split("=", 1) for p in self.headers["baponi-signature"].split(","))
        expected = hmac.new(
            secret.encode(), parts["t"].encode() + b"." + self.body, hashlib.sha256
        ).hexdigest()
        fresh = abs(time.time() - int(parts["t"])) <= tolerance_s
        return fresh and hmac.compare_digest(expected, parts["v1"])


@dataclass
class Receiver:
    """Answers ``fail_first`` requests with 500, then 200; records every request."""

    ca_file: Path
    fail_first: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: int = 0
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"

    def wait_for(self, count: int, timeout: float = 30) -> list[Delivery]:
        """Block until ``count`` successful deliveries arrived; return them."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise AssertionError(
                    f"{len(self.deliveries)} of {count} deliveries after {timeout}s "
                    f"({self.attempts} attempts)"
                )
            return list(self.deliveries)

    def start(self, ca: trustme.CA, port: int = 0) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._arrived:
                    receiver.attempts += 1
                    failing = receiver.attempts <= receiver.fail_first
                    if not failing:
                        receiver.deliveries.append(
                            Delivery(
                                self.path,
                                {k.lower(): v for k, v in self.headers.items()},
                                body,
                            )
                        )
                    receiver._arrived.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost", "vm").configure_cert(context)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def make_ca(directory: Path) -> tuple[trustme.CA, Path]:
    """A throwaway CA and its PEM file, for ``baponi serve --webhook-ca-file``."""
    ca = trustme.CA()
    pem = directory / "webhook-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return ca, pem
