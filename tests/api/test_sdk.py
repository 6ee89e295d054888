"""The official ``baponi`` SDK against a real server, real sandboxes and a real database."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from baponi import RateLimitError, ThreadBusyError

from tests.harness import Server, assert_error, cli, on_both_paths, org_key, unique, wait_until

server = on_both_paths()  # every test: without the pool and with it

EXECUTE = "/v1/sandbox/execute"
MiB = 1 << 20
SLOW_CODE = "import time; open('started', 'w').close(); time.sleep(4); print('done')"

WHEEL_BUILDER = """
import zipfile
files = {
    "mypkg/__init__.py": "VALUE = 42\\n",
    "mypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\\nName: mypkg\\nVersion: 1.0\\n",
    "mypkg-1.0.dist-info/WHEEL": (
        "Wheel-Version: 1.0\\nGenerator: hand\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    ),
}
record = "".join(f"{name},,\\n" for name in files) + "mypkg-1.0.dist-info/RECORD,,\\n"
files["mypkg-1.0.dist-info/RECORD"] = record
with zipfile.ZipFile("mypkg-1.0-py3-none-any.whl", "w") as wheel:
    for name, text in files.items():
        wheel.writestr(name, text)
print("built")
"""


@pytest.fixture(scope="module")
def other_org_key(server: Server) -> str:
    return org_key(server, "other")


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("python", "print('py', 6 * 7)", "py 42\n"),
        ("bash", "echo bash $((6 * 7))", "bash 42\n"),
        ("node", "console.log('node', 6 * 7)", "node 42\n"),
    ],
)
def test_execute_each_language(sdk: Any, language: str, code: str, expected: str) -> None:
    result = sdk.execute(code, language=language, timeout=30)
    assert result.stdout == expected
    assert result.success is True
    assert result.exit_code == 0
    assert result.error is None


def test_non_zero_exit_is_failed(sdk: Any, api: httpx.Client) -> None:
    result = sdk.execute("import sys; print('bye'); sys.exit(3)", timeout=30)
    assert result.success is False
    assert result.exit_code == 3
    assert result.error is None
    assert result.stdout == "bye\n"
    body = api.post(EXECUTE, json={"code": "exit 3", "language": "bash"}).json()
    assert body["exit_code"] == 3
    assert sdk.get_execution(body["trace_id"]).status == "failed"


def test_stderr_is_separate(sdk: Any) -> None:
    result = sdk.execute("import sys; sys.stderr.write('oops\\n'); print('ok')", timeout=30)
    assert result.stdout == "ok\n"
    assert "oops" in result.stderr


@pytest.mark.slow
def test_timeout(sdk: Any, api: httpx.Client) -> None:
    started = time.monotonic()
    result = sdk.execute("import time; time.sleep(30)", timeout=1)
    assert time.monotonic() - started < 15
    assert result.error == "timeout"
    assert result.exit_code != 0
    assert result.success is False
    body = api.post(EXECUTE, json={"code": "sleep 30", "language": "bash", "timeout": 1}).json()
    assert body["error"] == "timeout"
    assert sdk.get_execution(body["trace_id"]).status == "timeout"


@pytest.mark.slow
def test_thread_files_persist_within_thread_only(
    server: Server, sdk: Any, other_org_key: str
) -> None:
    thread = unique("files")
    write = sdk.execute("open('note.txt', 'w').write('remember me')", thread_id=thread, timeout=30)
    assert write.success, write.stderr
    read = "import os; print(open('note.txt').read() if os.path.exists('note.txt') else 'absent')"
    assert sdk.execute(read, thread_id=thread, timeout=30).stdout == "remember me\n"
    assert sdk.execute(read, thread_id=unique("files"), timeout=30).stdout == "absent\n"
    assert sdk.execute(read, timeout=30).stdout == "absent\n"
    with server.sdk(other_org_key) as other:
        assert other.execute(read, thread_id=thread, timeout=30).stdout == "absent\n"
        # and what the other organisation writes there does not leak back
        other.execute("open('note.txt', 'w').write('intruder')", thread_id=thread, timeout=30)
    assert sdk.execute(read, thread_id=thread, timeout=30).stdout == "remember me\n"


@pytest.mark.slow
def test_pip_install_user_persists_in_thread(sdk: Any) -> None:
    thread = unique("pip")
    built = sdk.execute(WHEEL_BUILDER, thread_id=thread, timeout=60)
    assert built.stdout == "built\n", built.stderr
    install = sdk.execute(
        "python3 -m pip install --user --no-index --disable-pip-version-check "
        "./mypkg-1.0-py3-none-any.whl",
        language="bash",
        thread_id=thread,
        timeout=120,
    )
    assert install.exit_code == 0, install.stdout + install.stderr
    assert "Successfully installed mypkg-1.0" in install.stdout
    used = sdk.execute("import mypkg; print(mypkg.VALUE)", thread_id=thread, timeout=30)
    assert used.stdout == "42\n", used.stderr
    elsewhere = sdk.execute("import mypkg", thread_id=unique("pip"), timeout=30)
    assert elsewhere.success is False
    assert "ModuleNotFoundError" in elsewhere.stderr


def test_env_vars_visible(sdk: Any) -> None:
    result = sdk.execute(
        "import os; print(os.environ['MY_VAR'], os.environ['OTHER_1'])",
        env_vars={"MY_VAR": "hello world", "OTHER_1": "x\ty"},
        timeout=30,
    )
    assert result.stdout == "hello world x\ty\n", result.stderr


def test_server_environment_not_visible(sdk: Any) -> None:
    result = sdk.execute(
        "import os; print(os.environ.get('BAPONI_TEST_SECRET', 'none'))", timeout=30
    )
    assert result.stdout == "none\n"


@pytest.mark.parametrize("env", [{"PATH": "x"}, {"BAPONI_X": "y"}, {"LD_PRELOAD": "/x.so"}])
def test_reserved_env_var_refused(sdk: Any, api: httpx.Client, env: dict[str, str]) -> None:
    response = api.post(EXECUTE, json={"code": "print(1)", "env_vars": env})
    assert response.status_code == 400
    assert response.json() == {
        "error": "validation_error",
        "message": "This environment variable name is reserved by the system",
    }
    with pytest.raises(ValueError, match="reserved by the system"):
        sdk.execute("print(1)", env_vars=env)


def test_missing_key_is_401(server: Server) -> None:
    response = httpx.post(f"{server.url}{EXECUTE}", json={"code": "print(1)"})
    assert_error(response, 401, "unauthorized")


@pytest.mark.slow
def test_busy_thread_is_409(server: Server, sdk: Any, api: httpx.Client) -> None:
    thread = unique("busy")
    slow: dict[str, Any] = {}

    def run_slow() -> None:
        with server.client() as client:
            slow["response"] = client.post(
                EXECUTE,
                json={
                    "code": SLOW_CODE,
                    "thread_id": thread,
                    "timeout": 30,
                },
            )

    worker = threading.Thread(target=run_slow)
    worker.start()
    try:

        def started() -> bool:
            assert worker.is_alive(), slow
            return bool(list(server.threads.glob(f"*/{thread}/started")))

        wait_until(started, 20, "the slow execution to start")
        conflict = api.post(EXECUTE, json={"code": "print(1)", "thread_id": thread})
        assert_error(conflict, 409, "conflict")
        with pytest.raises(ThreadBusyError) as caught:
            sdk.execute("print(1)", thread_id=thread)
        assert caught.value.status_code == 409
        # another thread is not busy meanwhile
        assert sdk.execute("print('other')", thread_id=unique("busy")).stdout == "other\n"
    finally:
        worker.join(timeout=60)
    assert slow["response"].status_code == 200
    assert slow["response"].json()["stdout"] == "done\n"
    # once the first one is done, the thread is free again
    assert sdk.execute("print('free')", thread_id=thread).stdout == "free\n"


def test_get_execution_after_inline_run(
    server: Server, sdk: Any, api: httpx.Client, other_org_key: str
) -> None:
    body = api.post(EXECUTE, json={"code": "print('recorded')"}).json()
    trace_id = body["trace_id"]
    status = sdk.get_execution(trace_id)
    assert status.trace_id == trace_id
    assert status.status == "success"
    assert status.stdout == "recorded\n"
    assert status.stderr == ""
    assert status.exit_code == 0
    assert status.error is None
    assert status.delivery_mode == "inline"
    assert status.created_at
    assert status.completed_at
    assert status.completed_at >= status.created_at
    assert status.duration_ms >= 0
    with server.client(other_org_key) as other:
        response = other.get(f"/v1/executions/{trace_id}")
    assert_error(response, 404, "not_found")
    missing = api.get("/v1/executions/trc_doesnotexist")
    assert missing.status_code == 404


def test_output_flood_is_capped(sdk: Any, api: httpx.Client) -> None:
    code = "import sys\nchunk = 'x' * 65536\nwhile True:\n    sys.stdout.write(chunk)\n"
    body = api.post(EXECUTE, json={"code": code, "timeout": 30}).json()
    assert body["error"] == "output_limit_exceeded"
    assert body["success"] is False
    assert len(body["stdout"].encode()) == MiB
    assert set(body["stdout"]) == {"x"}
    assert sdk.get_execution(body["trace_id"]).error == "output_limit_exceeded"


@pytest.mark.slow
def test_memory_bomb_is_oom(sdk: Any, api: httpx.Client) -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n"
    body = api.post(EXECUTE, json={"code": code, "timeout": 60}).json()
    assert body["error"] == "memory_limit_exceeded"
    assert body["success"] is False
    assert sdk.get_execution(body["trace_id"]).status == "oom"


def test_seccomp_violation(sdk: Any, api: httpx.Client) -> None:
    code = "import ctypes; ctypes.CDLL(None).syscall(101, 0, 0, 0, 0); print('survived')"
    body = api.post(EXECUTE, json={"code": code, "timeout": 30}).json()
    assert body["error"] == "security_policy_violation"
    assert "survived" not in body["stdout"]
    assert sdk.get_execution(body["trace_id"]).status == "seccomp"


@pytest.mark.slow
def test_timeout_above_profile_cap_is_429(server: Server) -> None:
    cli(server.home, "profiles", "set", "tiny", "--max-timeout", "5")
    key = server.new_key("--profile", "tiny")
    with server.client(key) as client:
        response = client.post(EXECUTE, json={"code": "print(1)", "timeout": 10})
        assert response.status_code == 429
        assert response.json()["error"] == "rate_limited"
        assert "5" in response.json()["message"]
        assert "limit" in response.json()["message"]
        assert response.headers.get("retry-after")
        within = client.post(EXECUTE, json={"code": "print(1)", "timeout": 5})
        assert within.status_code == 200
        assert within.json()["stdout"] == "1\n"
    with server.sdk(key) as client, pytest.raises(RateLimitError) as caught:
        client.execute("print(1)", timeout=10)
    assert caught.value.status_code == 429
