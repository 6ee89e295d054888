"""How a sandbox whose policy lets it out reaches the egress proxy (:mod:`baponi_core._net.
egress`): the proxy's unix socket in its slot, seen at ``/run/baponi/egress``, and its
init, which listens on the sandbox's own loopback at 127.0.0.1:3128 and relays each
connection to that socket (the forwarder, in ``agent.c``). The sandbox keeps an empty
network namespace: no interface but ``lo``, no route to the host, no DNS of its own."""

from __future__ import annotations

from baponi_core._net.policy import Mode, NetworkPolicy
from baponi_core._sandbox.spec import RUN_DIR

SOCKET = "egress"  # the file name in the slot's run directory
PROXY = "http://127.0.0.1:3128"
NO_PROXY = "localhost,127.0.0.1,::1"


def forwards(policy: NetworkPolicy) -> bool:
    return policy.mode is not Mode.NONE


def socket_path() -> str:
    """Where the forwarder finds the proxy, inside the sandbox."""
    return f"{RUN_DIR}/{SOCKET}"


def env(policy: NetworkPolicy) -> dict[str, str]:
    """What makes clients use the proxy, with no change to their code: Python's urllib,
    requests, httpx and pip, curl (lower-case http_proxy only), npm, and Node's own fetch
    (Node >= 22.21 reads the variables with NODE_USE_ENV_PROXY). Nothing without egress."""
    if not forwards(policy):
        return {}
    return {
        "HTTP_PROXY": PROXY,
        "HTTPS_PROXY": PROXY,
        "http_proxy": PROXY,
        "https_proxy": PROXY,
        "NO_PROXY": NO_PROXY,
        "no_proxy": NO_PROXY,
        "NODE_USE_ENV_PROXY": "1",
        "npm_config_proxy": PROXY,
        "npm_config_https_proxy": PROXY,
        "npm_config_noproxy": NO_PROXY,
    }
