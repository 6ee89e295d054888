"""The pool of prepared sandboxes, through a real pooled server: executions served from
it behave as cold ones do and share nothing; it refills; what was disturbed or died while
it waited is discarded; closing the server ends every sandbox it kept."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import (
    BAPONI,
    POOLED,
    Server,
    cli,
    org_key,
    start_server,
    stop_server,
    unique,
    wait_until,
)

EXECUTE = "/v1/sandbox/execute"
# Whether the program ran in the interpreter that waited in a prepared sandbox: the
# kernel's record of its exec still says how it was started.
WARM = (
    "print('warm' if b'-c' in open('/proc/self/cmdline', 'rb').read().split(b'\\0') else 'fresh')"
)
NODE_WARM = (
    "console.log(require('fs').readFileSync('/proc/self/cmdline', 'latin1')"
    ".split('\\0').includes('-r') ? 'warm' : 'fresh');"
)
PROBES = {"python": WARM, "node": NODE_WARM}
# The same for any language: how long the sandbox's init had lived when the program ran.
INIT_AGE = (
    "t=$(cut -d' ' -f22 /proc/1/stat); u=$(cut -d' ' -f1 /proc/uptime); "
    'echo "$u $t $(getconf CLK_TCK)"'
)


def execute(client: httpx.Client, code: str, **fields: Any) -> dict[str, Any]:
    response = client.post(EXECUTE, json={"code": textwrap.dedent(code), "timeout": 30, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def warm_run(client: httpx.Client, code: str, within: float = 20, **fields: Any) -> dict[str, Any]:
    """Run ``code`` (Python unless ``language`` says, after its probe) until it runs in a
    waiting interpreter of the pool (which may still be refilling); its result, the
    probe's line removed."""
    deadline = time.monotonic() + within
    probe = PROBES[fields.get("language", "python")]
    while True:
        body = execute(client, f"{probe}\n{textwrap.dedent(code)}", **fields)
        first, _, rest = body["stdout"].partition("\n")
        if first == "warm":
            body["stdout"] = rest
            return body
        assert first == "fresh", body
        assert time.monotonic() < deadline, "no execution was served by a waiting interpreter"
        time.sleep(0.3)


def init_age_s(client: httpx.Client) -> float:
    body = execute(client, INIT_AGE, language="bash")
    uptime, start, ticks = body["stdout"].split()
    return float(uptime) - int(start) / int(ticks)


@pytest.fixture()
def pooled(pooled_server: Server) -> Iterator[httpx.Client]:
    with pooled_server.client() as client:
        yield client


# -- the same program, on both paths ------------------------------------------------------

SAME = {
    "identity": """
        import os, sys
        print(__name__, __file__, sys.argv, sys.orig_argv[1:], sys.path[0], os.getcwd())
        print(sorted(os.environ.items()))
        print(repr(sys.stdin.read()), sys.flags)
        print(sorted(k for k in globals() if k != "__builtins__"), __spec__, __package__)
        """,
    "traceback": "def f():\n    raise ValueError('no')\nprint('before')\nf()\n",
    "syntax": "print('never'\n",
    "exit-text": "import sys; sys.exit('bye')",
    "exit-code": "import sys; print('x'); sys.exit(3)",
    "exit-159": "raise SystemExit(159)",
    "chained": "try:\n    1/0\nexcept ZeroDivisionError:\n    raise KeyError('k')\n",
    "atexit": "import atexit; atexit.register(print, 'at exit'); print('body')",
}


SAME_NODE = {
    "identity": """
        const env = Object.entries(process.env).sort();
        console.log(process.argv.slice(1), process.execArgv, process.cwd(), __filename);
        console.log(JSON.stringify(env), require.main === module, module.paths);
        console.log(Object.keys(require.cache), process.stdin.isTTY);
        """,
    "throw": "function f() { throw new TypeError('no'); }\nconsole.log('before');\nf();\n",
    "exit-code": "console.log('x'); process.exit(3);",
    "rejection": "Promise.reject(new Error('late'));",
}
CASES = [("python", c) for c in sorted(SAME)] + [("node", c) for c in sorted(SAME_NODE)]


@pytest.mark.parametrize(("language", "case"), CASES)
def test_warm_interpreter_runs_a_program_as_a_fresh_one(
    cold_server: Server, pooled: httpx.Client, language: str, case: str
) -> None:
    env = {"GREETING": "hello", "EMPTY": ""}
    source = (SAME if language == "python" else SAME_NODE)[case]
    if case == "syntax":  # no probe runs in a file that does not compile
        warm_run(pooled, "")
        time.sleep(1)  # refilled
        warm = execute(pooled, source, env_vars=env)
        with cold_server.client() as cold_client:
            cold = execute(cold_client, source, env_vars=env)
    else:
        warm = warm_run(pooled, source, env_vars=env, language=language)
        with cold_server.client() as cold_client:  # the same lines: the probe first
            code = f"{PROBES[language]}\n{textwrap.dedent(source)}"
            cold = execute(cold_client, code, env_vars=env, language=language)
        assert cold["stdout"].startswith("fresh\n"), cold
        cold["stdout"] = cold["stdout"].removeprefix("fresh\n")
    for field in ("stdout", "stderr", "exit_code", "error", "success"):
        assert warm[field] == cold[field], (field, warm[field], cold[field])


def test_user_site_packages_of_the_thread_home_in_their_place(
    cold_server: Server, pooled: httpx.Client
) -> None:
    thread = unique("pool")
    make = """
        import os, site
        os.makedirs(site.getusersitepackages(), exist_ok=True)
        with open(os.path.join(site.getusersitepackages(), 'poolmod.py'), 'w') as f:
            f.write('VALUE = 42\\n')
        with open(os.path.join(site.getusersitepackages(), 'extra.pth'), 'w') as f:
            f.write('/tmp/from-pth\\n')
        """
    show = "import sys, poolmod; print(poolmod.VALUE, poolmod.__file__); print(sys.path)"
    execute(pooled, make, thread_id=thread)
    warm = warm_run(pooled, show, thread_id=thread)
    with cold_server.client() as cold_client:
        execute(cold_client, make, thread_id=thread)
        cold = execute(cold_client, f"{WARM}\n{show}", thread_id=thread)
    cold["stdout"] = cold["stdout"].removeprefix("fresh\n")
    assert warm["stdout"].startswith("42 /home/baponi/.local/lib/"), warm
    assert warm["stdout"] == cold["stdout"], (warm, cold)


def test_startup_variables_get_a_fresh_interpreter(pooled: httpx.Client) -> None:
    """MALLOC_ARENA_MAX acts on the C library as the interpreter starts: a waiting one
    cannot serve it, so a fresh one starts in the prepared sandbox."""
    warm_run(pooled, "")  # the pool is serving
    body = execute(
        pooled,
        f"{WARM}\nimport os; print(os.environ['MALLOC_ARENA_MAX'])",
        env_vars={"MALLOC_ARENA_MAX": "2"},
    )
    assert body["stdout"] == "fresh\n2\n", body


# -- single use ---------------------------------------------------------------------------

LEAVE = """
    import builtins, os, subprocess, sys
    open('/tmp/left', 'w').write('x')
    open('/home/baponi/left', 'w').write('x')
    subprocess.Popen(['sleep', '300'], start_new_session=True)
    sys.modules['left_behind'] = sys
    builtins.left_behind = 1
    os.environ['LEFT'] = '1'
    print('left')
    """
FIND = """
    import builtins, os, sys
    print(sorted(os.listdir('/tmp')), sorted(os.listdir('/home/baponi')))
    print([p for p in os.listdir('/proc') if p.isdigit() and p not in ('1', str(os.getpid()))])
    print('left_behind' in sys.modules, hasattr(builtins, 'left_behind'), 'LEFT' in os.environ)
    """


def test_consecutive_pooled_executions_share_nothing(pooled_server: Server) -> None:
    other = org_key(pooled_server, unique("org"))
    with pooled_server.client() as ours, pooled_server.client(other) as theirs:
        for first, second in ((ours, ours), (ours, theirs)):
            assert warm_run(first, LEAVE)["stdout"] == "left\n"
            found = warm_run(second, FIND)
            assert found["stdout"] == "[] []\n[]\nFalse False False\n", found


def test_bash_is_served_prepared(pooled: httpx.Client) -> None:
    """Its sandbox was set up before the request: the init is older than it."""
    ages = []
    for _ in range(4):  # a loaded machine may take more than one wait to refill the pool
        time.sleep(1.5)
        ages.append(init_age_s(pooled))
        if ages[-1] > 0.5:
            break
    assert ages[-1] > 0.5, ages


def test_node_shares_nothing_and_never_sees_its_bootstrap(pooled: httpx.Client) -> None:
    leave = (
        "require('fs').writeFileSync('/tmp/left', 'x'); globalThis.left = 1; console.log('left')"
    )
    find = (
        "const fs = require('fs');"
        "console.log(fs.readdirSync('/tmp'), fs.readdirSync('/run/baponi'), typeof left)"
    )
    assert warm_run(pooled, leave, language="node")["stdout"] == "left\n"
    found = warm_run(pooled, find, language="node")
    assert found["stdout"] == "[] [ 'init', 'main.js' ] undefined\n", found


# -- refill, discard ----------------------------------------------------------------------


def test_refilled_after_use(pooled: httpx.Client) -> None:
    """More executions at once than the pool holds: some run cold, then it is full
    again and serves every one warm."""
    warm_run(pooled, "")
    seen = [execute(pooled, WARM)["stdout"] for _ in range(4)]
    assert "warm\n" in seen, seen
    time.sleep(3)
    assert execute(pooled, WARM)["stdout"] == "warm\n"
    time.sleep(1)
    assert execute(pooled, WARM)["stdout"] == "warm\n"


def waiting_interpreters(server: Server) -> list[int]:
    """Host pids of the pool's waiting interpreters of ``server``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or b"def _boot():" not in (entry / "cmdline").read_bytes():
                continue
            if f"srv-{server.process.pid}-" in (entry / "cgroup").read_text():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def memory_cgroup(pid: int) -> Path:
    """The cgroup directory a process is in (the memory hierarchy's, on cgroup v1)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path("/sys/fs/cgroup") / path.lstrip("/")
    raise AssertionError(f"no memory cgroup for {pid}")


def test_dead_or_disturbed_prepared_sandboxes_are_discarded(pooled_server: Server) -> None:
    with pooled_server.client() as client:
        warm_run(client, "")
        waiting = wait_until(
            lambda: len(found := waiting_interpreters(pooled_server)) >= 2 and found,
            20,
            "two waiting interpreters",
        )
        dead, disturbed = waiting[:2]
        os.kill(dead, 9)  # it died while it waited
        intruder = subprocess.Popen(["sleep", "300"])  # a process no sandbox had
        try:
            (memory_cgroup(disturbed) / "cgroup.procs").write_text(str(intruder.pid))
            for _ in range(3):  # whatever they got, every execution is right
                body = execute(client, "print(6 * 7)")
                assert (body["stdout"], body["exit_code"]) == ("42\n", 0), body
            # the disturbed sandbox was closed, not used: its cgroup was killed
            wait_until(lambda: intruder.poll() is not None, 10, "the intruder to be killed")
        finally:
            intruder.kill()
            intruder.wait()


def test_stopping_the_server_ends_every_pooled_sandbox(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", *POOLED)
    try:
        ours = f"srv-{server.process.pid}-*/sbx-*"  # the server's runtime's sandboxes
        base = Path("/sys/fs/cgroup/pids/baponi")
        if not base.exists():
            base = Path("/sys/fs/cgroup/baponi")
        groups = wait_until(
            lambda: len(found := sorted(base.glob(ours))) >= 4 and found, 30, "a full pool"
        )
        members = [int(p) for g in groups for p in (g / "cgroup.procs").read_text().split()]
        assert len(members) >= 2 * 4 + 2, members  # bwrap and init each, two interpreters
    finally:
        stop_server(server)
    # The server's end ends its sandboxes (their init's socket closes; bwrap dies with
    # its parent); the host's init reaps what was the server's to reap.
    wait_until(
        lambda: not [pid for pid in members if Path(f"/proc/{pid}").exists()],
        10,
        "every process of the pool's sandboxes to be gone",
    )


# -- every kind of request ----------------------------------------------------------------


def test_pooled_thread_home_env_and_profile_limits(pooled_server: Server) -> None:
    """A thread home attached by propagation, the request's variables, and a profile's
    own shape (its first request cold, the next ones from the pool)."""
    name = unique("small")
    cli(pooled_server.home, "profiles", "set", name, "--memory", "128", "--tmp", "16")
    key = pooled_server.new_key("--profile", name)
    thread = unique("pool")
    with pooled_server.client(key) as client:
        execute(client, "open('kept', 'w').write('from before')", thread_id=thread)
        probe = """
            import os
            print(open('kept').read(), os.environ['COLOUR'])
            st = os.statvfs('/tmp'); print(st.f_blocks * st.f_frsize >> 20)
            """
        body = warm_run(client, probe, thread_id=thread, env_vars={"COLOUR": "blue"})
        assert body["stdout"] == "from before blue\n16\n", body
        bomb = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))\n"
        body = warm_run(client, bomb, within=30)
        assert body["error"] == "memory_limit_exceeded", body


def test_pooled_volumes_and_sub_paths(pooled_server: Server) -> None:
    home = pooled_server.home
    slug = unique("vol")
    cli(home, "volumes", "create", slug)
    key = pooled_server.new_key("--volume", slug)
    with pooled_server.client(key) as client:
        top = f"/data/{slug}"
        write = f"import os; os.makedirs('{top}/a/b'); open('{top}/a/b/f', 'w').write('v')"
        execute(client, write)
        whole = warm_run(client, f"import os; print(sorted(os.listdir('/data/{slug}')))")
        assert whole["stdout"] == "['a']\n", whole
        narrowed = warm_run(
            client,
            f"import os; print(os.listdir('/data/{slug}'), open('/data/{slug}/a/b/f').read())",
            sub_paths=[f"/data/{slug}/a/b"],
        )
        assert narrowed["stdout"] == "['a'] v\n", narrowed


def test_pooled_streaming(pooled: httpx.Client) -> None:
    warm_run(pooled, "")
    time.sleep(1)
    with pooled.stream(
        "POST",
        EXECUTE,
        json={"code": WARM, "timeout": 30},
        headers={"Accept": "application/x-ndjson"},
    ) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    outputs = "".join(e.get("data", "") for e in lines if e.get("type") == "output")
    assert outputs == "warm\n", lines


def test_pool_spec_is_checked(tmp_path: Path) -> None:
    done = subprocess.run(
        [*BAPONI, "serve", "--home", str(tmp_path), "--pool", "ruby=3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert re.search(r"--pool: 'ruby=3': expected LANGUAGE=N", done.stderr), done.stderr
