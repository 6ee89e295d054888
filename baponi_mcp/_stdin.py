"""A standard input that the server itself can end.

The MCP SDK reads stdin in a worker thread that cancellation cannot interrupt, so a
server told to stop (SIGTERM, SIGINT) would wait for the client's next message. Here fd 0
becomes a pipe, fed from the client's stdin by a daemon thread; :meth:`RelayedStdin.end`
closes the pipe's only write end, and the SDK sees the same end of input as when the client
closes stdin, with the same orderly shutdown.
"""

from __future__ import annotations

import contextlib
import os
import threading

CHUNK = 1 << 16


class RelayedStdin:
    def __init__(self) -> None:
        self._client = os.dup(0)
        read, self._write = os.pipe()
        os.dup2(read, 0)
        os.close(read)
        self._null = os.open(os.devnull, os.O_WRONLY)
        threading.Thread(target=self._relay, name="stdin relay", daemon=True).start()

    def end(self) -> None:
        """End of input for the reader. The write end's number is pointed at the null device
        rather than closed, so the relay never writes into a descriptor reused meanwhile."""
        os.dup2(self._null, self._write)

    def _relay(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(self._client, CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._write, view) :]
        self.end()
