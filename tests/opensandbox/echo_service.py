"""A service for the proxy tests, run inside a sandbox (``python3 echo_service.py PORT``,
stdlib only): it answers every request with what it got, as JSON (method, target,
headers, body, a chunked body decoded), and ``/stream`` in two parts, the second once
``/tmp/go`` exists, so that a test can tell a streamed answer from a buffered one.

A WebSocket handshake gets a minimal WebSocket server: at once a greeting naming the
target, ``X-Custom`` and the execd token it got (none, it should be), then each message
back with ``echo:`` before it; ``close-me`` closes with 4321 ``bye``."""

from __future__ import annotations

import base64
import http.server
import json
import os
import struct
import sys
import time
from hashlib import sha1


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.websocket()
        elif self.path == "/stream":
            self.stream()
        else:
            self.echo()

    do_POST = do_PUT = do_DELETE = do_GET

    def echo(self) -> None:
        body = self.body()
        answer = {
            "method": self.command,
            "target": self.path,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body": body.decode(errors="replace"),
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.chunk(b"first\n")
        while not os.path.exists("/tmp/go"):
            time.sleep(0.05)
        self.chunk(b"second\n")
        self.wfile.write(b"0\r\n\r\n")

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header(
            "Sec-WebSocket-Accept", base64.b64encode(sha1(key.encode()).digest()).decode()
        )
        if offered := self.headers.get("Sec-WebSocket-Protocol"):
            self.send_header("Sec-WebSocket-Protocol", offered.split(",")[0].strip())
        self.end_headers()
        said = [self.path, self.headers.get("X-Custom"), self.headers.get("X-Execd-Access-Token")]
        self.frame(0x1, f"hello {' '.join(map(str, said))}".encode())
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x8:
                self.frame(0x8, payload)
                return
            if opcode == 0x9:
                self.frame(0xA, payload)
            elif payload == b"close-me":
                self.frame(0x8, struct.pack(">H", 4321) + b"bye")
            elif opcode in (0x1, 0x2):
                self.frame(opcode, b"echo:" + payload)

    def read_frame(self) -> tuple[int, bytes]:
        first, second = self.rfile.read(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack(">H", self.rfile.read(2))
        elif size == 127:
            (size,) = struct.unpack(">Q", self.rfile.read(8))
        mask = self.rfile.read(4)
        data = self.rfile.read(size)
        return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))

    def frame(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            head = struct.pack(">BB", 0x80 | opcode, size)
        elif size < 1 << 16:
            head = struct.pack(">BBH", 0x80 | opcode, 126, size)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 127, size)
        self.wfile.write(head + payload)
        self.wfile.flush()


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
