"""``make run`` as a new user runs it: bare configuration, sandbox rotations, clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.processes import REPO

pytestmark = pytest.mark.worker


def bare_env(tmp_path: Path) -> dict[str, str]:
    """Nothing configured: no Redis reachable, no keys, no fleet file."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOKENFLEET_") and k not in ("REDIS_URL", "DATABASE_URL")
    }
    env.update(
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",  # nothing listens there: use the embedded one
            "DATABASE_URL": f"sqlite:///{tmp_path}/var/tokenfleet.db",
            "TOKENFLEET_STATE_DIR": str(tmp_path / "var"),
            "TOKENFLEET_FLEET_FILE": str(tmp_path / "fleet.toml"),
            "TOKENFLEET_SWEEP_INTERVAL": "1",
            "TOKENFLEET_TEST_MARKER": str(tmp_path),
        }
    )
    return env


def survivors(marker: str) -> list[int]:
    """PIDs of processes that carry this test's marker in their environment."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"TOKENFLEET_TEST_MARKER={marker}".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def status(env: dict[str, str]) -> list[dict]:
    done = subprocess.run(
        [str(REPO / ".venv/bin/tokenfleet"), "status", "--json", "--no-probe"],
        env=env, capture_output=True, text=True, timeout=60, cwd=env["TOKENFLEET_TEST_MARKER"],
    )  # fmt: skip
    if done.returncode != 0:
        return []
    return json.loads(done.stdout)


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            ["make", "-s", "-C", str(REPO), "run"],
            env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def ctrl_c(proc: subprocess.Popen[bytes]) -> int:
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    return proc.wait(timeout=120)


def wait_for_version(
    env: dict[str, str],
    at_least: int,
    proc: subprocess.Popen[bytes],
    log: Path,
    provider: str = "webkassa",
) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        rows = [r for r in status(env) if (r["provider"], r["tenant"]) == (provider, "sandbox")]
        if rows and rows[0]["version"] >= at_least:
            return rows[0]
        time.sleep(1)
    raise AssertionError(f"no sandbox rotation of {provider}:\n{log.read_text()}")


def test_make_run_rotates_in_the_sandbox_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    env = bare_env(tmp_path)
    log = tmp_path / "run.log"
    proc = start(env, log)
    try:
        first = wait_for_version(env, 1, proc, log)
        browser = wait_for_version(env, 1, proc, log, provider="chitai_gorod")
    finally:
        code = ctrl_c(proc)
    output = log.read_text()
    assert "(embedded, data in" in output
    assert "sandbox         webkassa at http://127.0.0.1:" in output
    assert "rotate webkassa/sandbox rotated v1" in output
    assert "sandbox         flaresolverr at http://127.0.0.1:" in output
    assert "rotate chitai_gorod/sandbox rotated v1" in output
    assert browser["last_outcome"] == "rotated"
    assert "fleet stopped" in output
    assert code in (0, 2, 130, -signal.SIGINT), output  # make dies of the SIGINT itself
    time.sleep(1)
    assert survivors(str(tmp_path)) == []
    key = (tmp_path / "var" / "fernet.key").read_text()

    proc = start(env, log)
    try:
        again = wait_for_version(env, first["version"], proc, log)
        assert again["version"] >= first["version"]
    finally:
        ctrl_c(proc)
    assert (tmp_path / "var" / "fernet.key").read_text() == key
    time.sleep(1)
    assert survivors(str(tmp_path)) == []
    assert "sandbox-password" not in log.read_text()
