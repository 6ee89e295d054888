"""A minimal webhook receiver: checks Baponi-Signature, prints the execution record.

    export BAPONI_WEBHOOK_SECRET=$(.venv/bin/baponi orgs webhook-secret)
    .venv/bin/python examples/webhook_receiver.py --cert cert.pem --key key.pem --port 8443

The server delivers to https:// URLs only, so give it a certificate the server trusts (a
public one, or your own CA passed to `baponi serve --webhook-ca-file`). Without --cert it
serves plain HTTP, for use behind a TLS-terminating proxy. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import ssl
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

TOLERANCE_S = 300  # refuse signatures older (or newer) than this: limits replays
MAX_BODY = 8 << 20  # stdout and stderr are capped by the profile; this is plenty


def verify(header: str, body: bytes, secret: str, now: float | None = None) -> bool:
    """Check ``Baponi-Signature: t=<unix>,v1=<hex>``: the HMAC-SHA256 of ``<t>.<body>``
    keyed with the organisation's secret, made within TOLERANCE_S of ``now``."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    timestamp, given = parts.get("t", ""), parts.get("v1", "")
    if not timestamp.isascii() or not timestamp.isdigit() or not given:  # int() refuses "²"
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_S:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    # Constant time, on bytes: compare_digest raises on a str with a non-ASCII character.
    return hmac.compare_digest(expected.hexdigest().encode(), given.encode("utf-8", "replace"))


class Handler(BaseHTTPRequestHandler):
    secret = ""
    seen: ClassVar[set[str]] = set()  # trace ids handled; a delivery can come more than once

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._answer(413)
            return
        body = self.rfile.read(length)  # verify the exact bytes, before parsing them
        if not verify(self.headers.get("Baponi-Signature", ""), body, self.secret):
            print(f"refused: bad or stale signature from {self.client_address[0]}", flush=True)
            self._answer(401)  # any non-2xx makes the server try again later
            return
        record = json.loads(body)
        attempt = self.headers.get("Baponi-Delivery-Attempt")
        if record["trace_id"] in self.seen:
            print(f"{record['trace_id']}: duplicate (attempt {attempt}), ignored", flush=True)
        else:
            self.seen.add(record["trace_id"])
            print(f"{record['trace_id']} (attempt {attempt}):", flush=True)
            print(json.dumps(record, indent=2), flush=True)
        self._answer(204)  # answer fast: the server waits at most 15 s for a response

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the prints above say enough


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", help="PEM certificate chain; serve HTTPS (else plain HTTP)")
    parser.add_argument("--key", help="PEM private key of --cert")
    args = parser.parse_args()
    secret = os.environ.get("BAPONI_WEBHOOK_SECRET")
    if not secret:
        parser.error("set BAPONI_WEBHOOK_SECRET (baponi orgs webhook-secret [ORG])")
    Handler.secret = secret

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    scheme = "http"
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    print(f"listening on {scheme}://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
