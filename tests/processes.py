"""Start real ``celery worker`` / ``celery beat`` processes for tests, and stop them cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import redis

from tokenfleet.settings import Settings

REPO = Path(__file__).resolve().parent.parent
STUBS = "tests.stubs:StubProvider,tests.stubs:BrowserStubProvider"
CELERY = [sys.executable, "-m", "celery", "-A", "tasks"]


def fleet_env(
    *,
    redis_url: str,
    database_url: str,
    key: str,
    key_prefix: str,
    state_dir: Path,
    fleet_file: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a fleet process gets: everything explicit, nothing from .env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFLEET_")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "TOKENFLEET_ENCRYPTION_KEYS": key,
            "TOKENFLEET_KEY_PREFIX": key_prefix,
            "TOKENFLEET_STATE_DIR": str(state_dir),
            "TOKENFLEET_FLEET_FILE": str(fleet_file),
            "TOKENFLEET_EXTRA_PROVIDERS": STUBS,
            "TOKENFLEET_RETRY_BASE": "0.2",
            "TOKENFLEET_RETRY_CAP": "2",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def fleet_env_for(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of fleet processes that share a test's ``settings``."""
    return fleet_env(
        redis_url=settings.redis_url,
        database_url=settings.database_url,
        key=settings.encryption_keys[0].get_secret_value(),
        key_prefix=settings.key_prefix,
        state_dir=settings.state_dir,
        fleet_file=settings.fleet_file,
        extra=extra,
    )


def _spawn(cmd: list[str], env: Mapping[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """A fleet process in its own session (so its whole group can be stopped), logging to log."""
    return subprocess.Popen(
        cmd, cwd=REPO, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def worker(
    env: Mapping[str, str],
    log: Path,
    *,
    queues: str = "light,browser",
    concurrency: int = 2,
    name: str = "test",
) -> Iterator[subprocess.Popen[bytes]]:
    """A running worker; waits until it answers a ping, stops it on exit."""
    from tasks.app import app

    handle = open(log, "wb")
    cmd = [
        *CELERY,
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-mingle",
        "--without-gossip",
    ]
    proc = _spawn(cmd, env, handle)
    try:
        broker = env["REDIS_URL"]
        with app.connection_for_write(broker) as conn:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited early:\n{log.read_text()[-3000:]}")
                replies = app.control.ping(timeout=0.5, connection=conn)
                if any(f"{name}@" in next(iter(r)) for r in replies):
                    break
            else:
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
        yield proc
    finally:
        _stop(proc)
        handle.close()


@contextmanager
def beat(env: Mapping[str, str], log: Path, schedule: Path) -> Iterator[subprocess.Popen[bytes]]:
    handle = open(log, "wb")
    cmd = [*CELERY, "beat", "--loglevel", "INFO", "-s", str(schedule), "--max-interval", "1"]
    proc = _spawn(cmd, env, handle)
    try:
        yield proc
    finally:
        _stop(proc)
        handle.close()


def purge_queues(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete("light", "browser", "unacked", "unacked_index")
    client.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``predicate`` every 0.2 s until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
