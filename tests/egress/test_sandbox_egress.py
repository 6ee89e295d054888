"""Egress from real sandboxes, through real servers, to loopback upstreams only.

A server started with ``--allow-private-egress`` lets sandboxes of profiles whose policy
allows it reach 127.0.0.1 through its proxy: a plain HTTP server, an HTTPS one whose
throwaway CA the request gives the sandbox, a package index serving a wheel built here
(pip), an npm registry serving a tarball built here (npm). Without the flag, a name that
resolves to loopback is refused. The sandbox itself keeps no interface but ``lo``.

The sandbox sets ``NO_PROXY`` for loopback (its own); the code here clears it, since its
upstreams are the host's loopback, reached only through the proxy.
"""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.egress.upstream import (
    HELLO,
    MARK,
    MODULE,
    PACKAGE,
    UNPROXIED_BASH,
    UNPROXIED_PYTHON,
    Upstream,
    package_files,
)
from tests.harness import Server, cli, run_cli, start_server, stop_server, unique
from tests.receiver import make_ca

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def egress_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("egress"), "--allow-private-egress")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    served = Upstream({})
    served.files.update(package_files(served.port))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    return make_ca(tmp_path_factory.mktemp("egress-ca"))


@pytest.fixture(scope="module")
def secure(ca: tuple[trustme.CA, Path]) -> Iterator[Upstream]:
    served = Upstream({"/hello": ("text/plain", HELLO)}, ca[0])
    yield served
    served.stop()


def key_for(server: Server, *network: str) -> str:
    """A key bound to a new profile with the network options ``network``."""
    profile = unique("net")
    cli(server.home, "profiles", "set", profile, *network)
    return server.new_key("--profile", profile)


def run(
    server: Server,
    key: str,
    code: str,
    language: str = "python",
    thread_id: str | None = None,
    env: dict[str, str] | None = None,
    timeout: int = 60,
) -> dict[str, Any]:
    """Execute ``code``; the result with the record's ``status`` added."""
    payload: dict[str, Any] = {"code": textwrap.dedent(code), "language": language}
    payload["timeout"] = timeout
    if thread_id:
        payload["thread_id"] = thread_id
    if env:
        payload["env_vars"] = env
    with server.client(key) as api:
        response = api.post("/v1/sandbox/execute", json=payload, timeout=timeout + 30)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        body["status"] = api.get(f"/v1/executions/{body['trace_id']}").json()["status"]
    return body


def ok(body: dict[str, Any]) -> str:
    assert body["success"] is True, body
    assert body["status"] == "success", body
    return str(body["stdout"])


def blocked(body: dict[str, Any]) -> None:
    assert body["success"] is False, body
    assert body["error"] == "blocked", body
    assert body["status"] == "blocked", body


# --------------------------------------------------------------------------- clients


def test_python_urllib_reaches_an_allowed_host(egress_server: Server, upstream: Upstream) -> None:
    key = key_for(egress_server, "--network", "allowlist", "--allow", "127.0.0.1")
    body = run(
        egress_server,
        key,
        UNPROXIED_PYTHON
        + f"""
import os, urllib.request
print(os.environ["HTTP_PROXY"], os.environ["HTTPS_PROXY"], os.environ["NODE_USE_ENV_PROXY"])
print(urllib.request.urlopen({upstream.url()!r}, timeout=20).read().decode())
""",
    )
    assert ok(body) == f"http://127.0.0.1:3128 http://127.0.0.1:3128 1\n{HELLO.decode()}\n"


def test_https_with_the_requests_ca(
    egress_server: Server, secure: Upstream, ca: tuple[trustme.CA, Path]
) -> None:
    """The CA reaches the sandbox with the request (a file the code writes in its thread),
    and the usual variables point the clients at it. TLS runs end to end through CONNECT."""
    key = key_for(egress_server, "--network", "allowlist", "--allow", "127.0.0.1")
    thread = unique("tls")
    pem = ca[1].read_text()
    ok(
        run(
            egress_server, key, f"open('/home/baponi/ca.pem', 'w').write({pem!r})", thread_id=thread
        )
    )
    trust = {
        "SSL_CERT_FILE": "/home/baponi/ca.pem",
        "CURL_CA_BUNDLE": "/home/baponi/ca.pem",
    }
    python = run(
        egress_server,
        key,
        UNPROXIED_PYTHON
        + f"import urllib.request\nprint(urllib.request.urlopen({secure.url()!r}).read().decode())",
        thread_id=thread,
        env=trust,
    )
    assert ok(python) == f"{HELLO.decode()}\n"
    curl = run(
        egress_server, key, UNPROXIED_BASH + f"curl -fsS {secure.url()}", "bash", thread, trust
    )
    assert ok(curl) == HELLO.decode()
    untrusted = run(egress_server, key, UNPROXIED_BASH + f"curl -fsS {secure.url()}", "bash")
    assert untrusted["exit_code"] == 60, untrusted  # the certificate is not trusted
    assert untrusted["error"] is None  # the proxy let it through: not blocked


def test_curl_over_plain_http(egress_server: Server, upstream: Upstream) -> None:
    key = key_for(egress_server, "--network", "allowlist", "--allow", f"127.0.0.1:{upstream.port}")
    assert ok(run(egress_server, key, UNPROXIED_BASH + f"curl -fsS {upstream.url()}", "bash")) == (
        HELLO.decode()
    )


@pytest.mark.parametrize("module", ["requests", "httpx"])
def test_python_http_libraries(egress_server: Server, upstream: Upstream, module: str) -> None:
    key = key_for(egress_server, "--network", "allowlist", "--allow", "127.0.0.1")
    body = run(
        egress_server,
        key,
        UNPROXIED_PYTHON + f"import {module}\nprint({module}.get({upstream.url()!r}).text)",
    )
    assert ok(body) == f"{HELLO.decode()}\n"


def test_node_fetch(egress_server: Server, upstream: Upstream) -> None:
    key = key_for(egress_server, "--network", "allowlist", "--allow", "127.0.0.1")
    code = (
        "delete process.env.NO_PROXY; delete process.env.no_proxy;\n"
        f"fetch({upstream.url()!r}).then(r => r.text()).then(t => console.log(t));"
    )
    # NO_PROXY is read as node starts: cleared for it by the shell that starts it.
    script = f"{UNPROXIED_BASH}node -e {shlex.quote(code)}"
    assert ok(run(egress_server, key, script, "bash")) == f"{HELLO.decode()}\n"


def test_pip_install_once_import_later(egress_server: Server, upstream: Upstream) -> None:
    key = key_for(egress_server, "--network", "allowlist", "--allow", "127.0.0.1")
    thread = unique("pip")
    install = run(
        egress_server,
        key,
        UNPROXIED_BASH
        + "PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --user --break-system-packages"
        + f" --index-url {upstream.url('/simple/')} {PACKAGE}",
        "bash",
        thread,
        timeout=120,
    )
    assert "Successfully installed egress-probe-1.0" in ok(install)
    later = run(egress_server, key, f"import {MODULE}; print({MODULE}.MARK)", thread_id=thread)
    assert ok(later) == f"{MARK}\n"
    assert f"/packages/{MODULE}-1.0-py3-none-any.whl" in upstream.paths


def test_npm_install(egress_server: Server, upstream: Upstream) -> None:
    key = key_for(egress_server, "--network", "allowlist", "--allow", "127.0.0.1")
    thread = unique("npm")
    install = run(
        egress_server,
        key,
        UNPROXIED_BASH
        + "cd ~ && npm install --no-audit --no-fund --no-update-notifier"
        + f" --registry {upstream.url('/')} {PACKAGE} >/dev/null"
        + f" && node -e \"console.log(require('{PACKAGE}'))\"",
        "bash",
        thread,
        timeout=120,
    )
    assert ok(install) == f"{MARK}\n"
    assert f"/{PACKAGE}/-/{PACKAGE}-1.0.0.tgz" in upstream.paths


# --------------------------------------------------------------------------- refusals


def test_a_host_not_allowed_is_refused_and_the_run_blocked(
    egress_server: Server, upstream: Upstream
) -> None:
    key = key_for(egress_server, "--network", "allowlist", "--allow", "127.0.0.1")
    body = run(
        egress_server,
        key,
        UNPROXIED_BASH + f"curl -sS -i {upstream.url(host='localhost')}; exit 7",
        "bash",
    )
    blocked(body)
    assert "HTTP/1.1 403 Forbidden" in body["stdout"]
    assert "X-Baponi-Egress: refused: not in the allowlist" in body["stdout"]
    assert "baponi egress proxy: not in the allowlist" in body["stdout"]


def test_a_refusal_does_not_block_a_run_that_succeeds(
    egress_server: Server, upstream: Upstream
) -> None:
    key = key_for(egress_server, "--network", "allowlist", "--allow", "127.0.0.1")
    body = run(
        egress_server,
        key,
        UNPROXIED_BASH + f"curl -s {upstream.url(host='localhost')} >/dev/null; true",
        "bash",
    )
    assert ok(body) == ""
    assert body["error"] is None


def test_deny_wins_over_allow(egress_server: Server, upstream: Upstream) -> None:
    key = key_for(
        egress_server,
        "--network",
        "allowlist",
        "--allow",
        "127.0.0.1",
        "--deny",
        f"127.0.0.1:{upstream.port}",
    )
    body = run(
        egress_server,
        key,
        UNPROXIED_PYTHON + f"import urllib.request\nurllib.request.urlopen({upstream.url()!r})",
    )
    blocked(body)
    assert "HTTP Error 403: Forbidden" in body["stderr"], body


def test_wildcard_rules(egress_server: Server, upstream: Upstream) -> None:
    """``*.localhost`` covers the names below it, which are refused before any lookup;
    ``localhost`` itself is not below it and goes through."""
    key = key_for(egress_server, "--network", "open", "--deny", "*.localhost")
    below = run(
        egress_server,
        key,
        UNPROXIED_BASH
        + f"curl -sS -i {upstream.url(host='db.internal.localhost')}; "
        + f"curl -sS -p -i {upstream.url(host='api.localhost')}; exit 1",
        "bash",
    )
    blocked(below)
    assert below["stdout"].count("X-Baponi-Egress: refused: denied by rule *.localhost") == 2
    itself = run(
        egress_server, key, UNPROXIED_BASH + f"curl -fsS {upstream.url(host='localhost')}", "bash"
    )
    assert ok(itself) == HELLO.decode()


def test_loopback_names_are_refused_without_the_flag(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> None:
    server = start_server(tmp_path_factory.mktemp("guarded-egress"))
    try:
        key = key_for(server, "--network", "open")
        before = len(upstream.paths)
        for host in ("localhost", "127.0.0.1"):
            body = run(
                server,
                key,
                UNPROXIED_BASH + f"curl -sS -i {upstream.url(host=host)}; exit 1",
                "bash",
            )
            blocked(body)
            assert "X-Baponi-Egress: refused: private address" in body["stdout"], body
        assert len(upstream.paths) == before  # nothing arrived
    finally:
        stop_server(server)


def test_none_has_no_interface_but_lo_and_no_way_to_the_proxy(egress_server: Server) -> None:
    body = run(
        egress_server,
        egress_server.key,  # the default profile: none
        """
        import errno, os, socket
        print(socket.if_nameindex())
        print(os.path.exists("/run/baponi/egress"), "HTTP_PROXY" in os.environ)
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", 3128))
            print("CONNECTED")
        except OSError as e:
            print(errno.errorcode[e.errno])
        """,
    )
    assert ok(body) == "[(1, 'lo')]\nFalse False\nECONNREFUSED\n"


def test_egress_has_no_interface_but_lo_either(egress_server: Server) -> None:
    key = key_for(egress_server, "--network", "open")
    body = run(
        egress_server,
        key,
        """
        import socket
        print(socket.if_nameindex())
        try:
            socket.getaddrinfo("localhost.example", 80)
            print("RESOLVED")
        except socket.gaierror:
            print("NO DNS")
        import errno
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.sendto(b"x", ("10.0.0.1", 53))  # no route: nothing but lo
            print("SENT")
        except OSError as e:
            print(errno.errorcode[e.errno])
        try:
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            print("RAW")
        except OSError as e:
            print(errno.errorcode[e.errno])
        """,
    )
    lines = ok(body).splitlines()
    assert lines[0] == "[(1, 'lo')]" and lines[1] == "NO DNS", body
    assert lines[2:] == ["ENETUNREACH", "EPERM"], body  # no UDP out, no raw sockets


def test_profiles_show_and_validate_policies(egress_server: Server) -> None:
    profile = unique("net")
    shown = cli(
        egress_server.home,
        "profiles",
        "set",
        profile,
        "--network",
        "allowlist",
        "--allow",
        "PyPI.org",
        "--allow",
        "*.pythonhosted.org:443",
        "--deny",
        "evil.pypi.org",
    )
    assert shown.endswith(
        "network=allowlist allow=*.pythonhosted.org:443 allow=pypi.org deny=evil.pypi.org"
    ), shown
    listed = cli(egress_server.home, "profiles", "list")
    assert f"{profile}: " in listed
    kept = cli(egress_server.home, "profiles", "set", profile, "--cpus", "0.5")
    assert "network=allowlist" in kept  # a change of limits keeps the policy
    for bad in (
        ["--network", "none", "--allow", "a.org"],
        ["--allow", "a.org"],
        ["--network", "allowlist", "--allow", "a.org:0"],
        ["--network", "allowlist", "--allow", "*"],
    ):
        done = run_cli(egress_server.home, "profiles", "set", profile, *bad)
        assert done.returncode != 0, (bad, done.stdout)
        assert "Traceback" not in done.stderr, done.stderr
    reset = cli(egress_server.home, "profiles", "set", profile, "--network", "none")
    assert reset.endswith("network=none")


def test_code_speaking_to_the_proxy_socket_itself_gets_the_same_policy(
    egress_server: Server, upstream: Upstream
) -> None:
    """The socket is the sandbox's own (its uid's, 0600) and says nothing the forwarder
    would not: the tap judges what arrives on it by the sandbox's policy alone."""
    key = key_for(egress_server, "--network", "allowlist", "--allow", "127.0.0.1")
    body = run(
        egress_server,
        key,
        f"""
        import os, socket, stat
        st = os.stat("/run/baponi/egress")
        print(stat.S_ISSOCK(st.st_mode), oct(st.st_mode & 0o777), st.st_uid)
        for target in ("localhost:{upstream.port}", "127.0.0.1:{upstream.port}"):
            s = socket.socket(socket.AF_UNIX)
            s.connect("/run/baponi/egress")
            head = f"CONNECT {{target}} HTTP/1.1\\r\\nX-Baponi-Egress: allowed\\r\\n\\r\\n"
            s.sendall(head.encode())
            print(s.recv(4096).split(b"\\r\\n")[0].decode())
        """,
    )
    assert ok(body) == (
        "True 0o600 1000\nHTTP/1.1 403 Forbidden\nHTTP/1.1 200 Connection established\n"
    )
