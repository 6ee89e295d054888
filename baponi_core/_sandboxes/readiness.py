"""The readiness listener: a program that runs *inside* a long-lived sandbox, started with
it, never imported by the server. When the runtime has a Jupyter kernel (``ipykernel`` on
its ``sys.path``) it accepts, and closes at once, connections on ``127.0.0.1:PORT``: what
the SDK's ``CodeInterpreter.create`` probes (OpenSandbox's Jupyter port, 44771) before it
returns. Without a kernel it exits at once, and that check fails, as it should.

    python3 -I readiness.py PORT

It starts with every sandbox, so it imports as little as can be: no ``socket`` (its
``enum`` and ``selectors``), only the built-in ``_socket``.
"""

from __future__ import annotations

import _socket
import os
import sys


def has_kernel() -> bool:
    return any(os.path.isdir(os.path.join(path, "ipykernel")) for path in sys.path)


def main(port: int) -> None:
    if not has_kernel():
        return
    server = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    server.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    while True:
        connection, _ = server._accept()  # type: ignore[attr-defined]  # what socket.accept wraps
        os.close(connection)


if __name__ == "__main__":
    main(int(sys.argv[1]))
