"""The range of host uids sandboxes get: what may be in it, and what the host already uses.
(The uids themselves, on real sandboxes: tests/isolation/test_uids.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from baponi_core._sandbox.uids import DEFAULT_UIDS, UidRange, running_as
from tests.harness import run_cli


def test_parse_and_bounds() -> None:
    assert UidRange.parse("100000-165535") == DEFAULT_UIDS
    assert 100000 in DEFAULT_UIDS and 165535 in DEFAULT_UIDS
    assert 99999 not in DEFAULT_UIDS and 165536 not in DEFAULT_UIDS
    assert str(UidRange.parse("200000-200000")) == "200000-200000"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "100000",
        "100000-",
        "-5",
        "5-1",
        "0-10",
        "1e5-2e5",
        "\u0661\u0660\u0660\u0660\u0660\u0660-200000",  # Arabic-Indic digits
        "60000-70000",
        "65534-65534",
    ],
)
def test_refused_ranges(text: str) -> None:
    """Malformed, empty, holding root, the storage uid (64000) or nobody (65534)."""
    with pytest.raises(ValueError):
        UidRange.parse(text)


def test_host_accounts_and_subordinate_ranges_conflict(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\nsvc:x:150000:150000::/:/bin/sh\n")
    (tmp_path / "group").write_text("root:x:0:\nteam:x:120000:\n")
    (tmp_path / "subuid").write_text("alice:165000:65536\n")
    (tmp_path / "subgid").write_text("bob:300000:65536\n")
    assert UidRange(100000, 165535).host_conflicts(tmp_path) == [
        "passwd entry svc (150000)",
        "group entry team (120000)",
        "subuid range of alice (165000+65536)",
    ]
    assert UidRange(100000, 119999).host_conflicts(tmp_path) == []
    assert UidRange(130000, 164999).host_conflicts(tmp_path) == ["passwd entry svc (150000)"]
    assert UidRange(365536, 400000).host_conflicts(tmp_path) == []
    assert UidRange(365535, 400000).host_conflicts(tmp_path) == [
        "subgid range of bob (300000+65536)"
    ]


def test_serve_refuses_a_bad_range(tmp_path: Path) -> None:
    done = run_cli(tmp_path / "home", "serve", "--sandbox-uids", "60000-70000")
    assert done.returncode == 2
    assert "must not include 64000" in done.stderr
    from_env = run_cli(tmp_path / "home", "serve", env={"BAPONI_SANDBOX_UIDS": "9-3"})
    assert from_env.returncode == 2 and "--sandbox-uids" in from_env.stderr


def test_running_as_sees_processes_by_their_real_uid() -> None:
    """Even a non-dumpable one, whose /proc files belong to root."""
    uid = 4_242_424
    assert not running_as(uid, within_s=0)
    code = "import ctypes, time; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); print(flush=True); "
    code += "time.sleep(30)"
    become = ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups"]
    process = subprocess.Popen([*become, sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline() == b"\n"
        assert Path(f"/proc/{process.pid}/status").stat().st_uid == 0  # PR_SET_DUMPABLE 0
        assert running_as(uid, within_s=0)
    finally:
        process.kill()
        process.wait()
    assert not running_as(uid, within_s=0)
