"""A TCP connection to a port of a long-lived sandbox, as the pipes of a process inside.

The server never enters the sandbox's network namespace and never connects to anything
the sandbox made: per connection it starts a relay inside, bash opening
``/dev/tcp/127.0.0.1/PORT`` and two ``cat``s copying between that socket and the relay's
stdin and stdout. What comes out is the sandbox's to say (and any process of the
sandbox's user may tamper with the relay), so the caller parses it as hostile; the
relay's stderr is never read. A port nothing listens on is a relay that ends having
said nothing.
"""

from __future__ import annotations

import contextlib
import signal

from baponi_core._errors import BaponiError, ValidationError
from baponi_core._models import decimal
from baponi_core._sandbox import Process, SandboxError
from baponi_core._sandboxes.live import Live

# $1 the port. ``wait`` keeps bash (the process group's leader) until both copies end,
# so that killing its group ends them.
SCRIPT = 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit; cat <&3 & cat >&3; wait'


class BadGateway(BaponiError):
    status, code = 502, "BAD_GATEWAY"


def port_of(text: str) -> int:
    port = decimal(text, 5)
    if port is None or not 1 <= port <= 65535:
        raise ValidationError("a port from 1 to 65535 is required: /proxy/{port}/{path}")
    return port


class Relay:
    def __init__(self, process: Process, port: int) -> None:
        self.process, self.port = process, port

    @classmethod
    async def open(cls, live: Live, port: int) -> Relay:
        process = await live.start(("bash", "-c", SCRIPT, "bash", str(port)), stdin=True)
        return cls(process, port)

    def unreachable(self) -> BadGateway:
        return BadGateway(f"nothing answered on port {self.port} inside the sandbox")

    async def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send(data)
        except OSError:
            raise self.unreachable() from None

    async def receive(self) -> bytes:
        """The next bytes the port sent; ``b""`` at its end."""
        return await self.process.stdout.receive()

    async def close(self) -> None:
        with contextlib.suppress(SandboxError):  # ended with its sandbox
            await self.process.signal(signal.SIGKILL)
        self.process.close()
