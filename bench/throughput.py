"""Rotations per second against a raw Celery no-op baseline, measured in the same run.

``make bench`` or ``.venv/bin/python bench/throughput.py [--tenants 2000] [--rounds 3]``
(quick look: ``--tenants 200 --rounds 1``)

Steps, all against the local Redis and a throw-away database:

1. create the database (Postgres ``tokenfleet_bench``, dropped at the end, or a SQLite
   file), migrate it, and insert ``--tenants`` credentials plus a few warm-up ones;
2. start both workers, each ``-c 2`` and warmed up with a few tasks so start-up is not
   measured: the **baseline** ``celery -A bench.noop_app worker -Q bench-noop`` (tokenfleet's
   Celery settings, a task that does nothing) and ``celery -A tasks worker -Q light``;
3. for each round: time N no-op tasks, then N ``tokenfleet.rotate`` (one per tenant,
   trigger ``manual``) measured exactly the same way; check every rotation result and every
   credential (version 1, one current version, one audit row), then reset them;
4. **sweep**: make every credential due and unrotated again, send one ``tokenfleet.sweep``
   and time until every credential has a promoted version (SQL ``promoted_at``);
5. sequential round trips of each task for per-task latency;
6. print the table and the ratios; the goal is rotations/s / baseline/s >= 0.5.

The machine may be shared: only the ratio of figures taken in the same run means anything,
and with ``--rounds`` > 1 the batches alternate and the median ratio is reported. The idle
worker of the pair only waits on Redis while the other one is timed.

In ``drain`` mode (default) the timed worker's consumer is paused, all N messages are
published, and the clock starts when the consumer resumes, so the bench process's own
publishing does not compete with the workers for the CPU; ``live`` mode sends while the
worker consumes. The clock stops at the latest ``date_done`` in the result backend
(written by the worker), so polling adds nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # `python bench/throughput.py` puts bench/ on the path, not the repository.
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy import Engine

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
PG_DB = "tokenfleet_bench"
REDIS_URL = "redis://127.0.0.1:6379/13"
KEY_PREFIX = "tfbench"
TENANT = "tenant-"
WARMUP = "warmup-"
GOAL = 0.5
ROTATE = "tokenfleet.rotate"
SWEEP = "tokenfleet.sweep"


class BenchError(Exception):
    """A benchmark step failed; the run is invalid."""


# -- arguments -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="Rotations per second vs a raw Celery no-op task, measured in one run.",
    )
    parser.add_argument("--tenants", type=int, default=2000, help="credentials (default 2000)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"an empty, disposable database (default: a fresh Postgres database {PG_DB} "
        f"on {PG_SERVER}, dropped at the end)",
    )
    parser.add_argument(
        "--sqlite", action="store_true", help="use a fresh SQLite file instead of Postgres"
    )
    parser.add_argument(
        "--redis-url", default=REDIS_URL, help=f"broker, backend and cache, FLUSHED ({REDIS_URL})"
    )
    parser.add_argument(
        "--provider",
        choices=("bench", "webkassa-sandbox"),
        default="bench",
        help="bench: zero-latency in-process stub; webkassa-sandbox: the HTTP sandbox",
    )
    parser.add_argument(
        "--mode",
        choices=("drain", "live"),
        default="drain",
        help="drain: publish all, then let the workers consume (default); live: time sends too",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating baseline/rotation rounds (3)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="warm-up tasks per worker (20)")
    parser.add_argument(
        "--probe", type=int, default=50, help="sequential round trips for latency (50)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the sweep measurement")
    parser.add_argument(
        "--fleet-app",
        default="tasks",
        metavar="MODULE",
        help="celery -A MODULE for the rotation worker (default tasks); to try a patched app",
    )
    parser.add_argument("--loglevel", default="INFO", help="worker log level (INFO)")
    parser.add_argument("--keep", action="store_true", help="keep the database and worker logs")
    parser.add_argument(
        "--fail-below",
        type=float,
        default=None,
        metavar="RATIO",
        help="exit 1 when the (median) rotate ratio is below RATIO",
    )
    parser.add_argument(
        "--trace", action="store_true", help="print each timed window in epoch seconds"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per batch, seconds (300)")
    args = parser.parse_args(argv)
    if args.tenants < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--tenants, --concurrency and --rounds must be positive")
    if args.sqlite and args.database_url:
        parser.error("--sqlite and --database-url exclude each other")
    return args


# -- processes -----------------------------------------------------------------------------


def fleet_env(*, redis_url: str, database_url: str, key: str, state_dir: Path) -> dict[str, str]:
    """The workers' environment: explicit, nothing inherited from TOKENFLEET_* or .env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOKENFLEET_") and k not in ("BROKER_URL", "RESULT_BACKEND")
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "TOKENFLEET_ENCRYPTION_KEYS": key,
            "TOKENFLEET_KEY_PREFIX": KEY_PREFIX,
            "TOKENFLEET_STATE_DIR": str(state_dir),
            "TOKENFLEET_FLEET_FILE": str(state_dir / "no-fleet.toml"),
            "TOKENFLEET_EXTRA_PROVIDERS": "bench.stub:BenchProvider",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class Worker:
    app: Celery
    node: str
    proc: subprocess.Popen[bytes]
    log: Path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown of the worker's process group; SIGKILL what is left after 20 s."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextmanager
def worker(
    app: Celery,
    module: str,
    queue: str,
    *,
    env: Mapping[str, str],
    log: Path,
    concurrency: int,
    loglevel: str,
) -> Iterator[Worker]:
    """A running ``celery -A module worker``, answering pings; its process group dies on exit."""
    node = f"bench-{queue}-{os.getpid()}@localhost"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        module,
        "worker",
        "-Q",
        queue,
        "-c",
        str(concurrency),
        "-n",
        node,
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
    ]
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=dict(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"{module} worker exited early:\n{_tail(log)}")
                if app.control.ping(destination=[node], timeout=0.5):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"{module} worker did not answer pings:\n{_tail(log)}")
            yield Worker(app, node, proc, log)
        finally:
            _stop(proc)


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


# -- timing tasks --------------------------------------------------------------------------


@dataclass
class Batch:
    """N tasks timed from the consumer's start (or first send) to the last ``date_done``."""

    label: str
    count: int
    seconds: float
    start: float
    results: list[Any] = field(repr=False)
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def _date_done(meta: Mapping[str, Any]) -> float:
    raw = meta.get("date_done")
    if isinstance(raw, datetime):
        when = raw
    elif isinstance(raw, str):
        when = datetime.fromisoformat(raw)
    else:
        raise BenchError(f"result without date_done: {meta!r:.200}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def collect(app: Celery, task_ids: Sequence[str], timeout: float) -> list[dict[str, Any]]:
    """Wait until every task is ready; return their result metas in ``task_ids`` order.

    Reads the Redis result keys with MGET every 50 ms (the same for every batch), so no
    per-task subscription or client round trip sits on the measured path.
    """
    from celery import states

    backend: Any = app.backend
    client = backend.client
    metas: dict[str, dict[str, Any]] = {}
    pending = list(task_ids)
    deadline = time.monotonic() + timeout
    while pending:
        still: list[str] = []
        for start in range(0, len(pending), 1000):
            chunk = pending[start : start + 1000]
            raws = client.mget([backend.get_key_for_task(tid) for tid in chunk])
            for tid, raw in zip(chunk, raws, strict=True):
                meta = backend.decode_result(raw) if raw is not None else None
                if meta is not None and meta.get("status") in states.READY_STATES:
                    metas[tid] = meta
                else:
                    still.append(tid)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise BenchError(f"{len(pending)} of {len(task_ids)} tasks unfinished")
            time.sleep(0.05)
    return [metas[tid] for tid in task_ids]


def run_batch(
    label: str,
    target: Worker,
    queue: str,
    name: str,
    kwargs_list: Sequence[dict[str, Any]],
    *,
    mode: str,
    timeout: float,
) -> Batch:
    """Send one task per kwargs and time them until the last one is done."""
    app = target.app
    if mode == "drain":
        reply = app.control.cancel_consumer(queue, destination=[target.node], reply=True)
        if not reply:
            raise BenchError(f"{target.node} did not stop consuming {queue}")
    sent_at: list[float] = []
    ids: list[str] = []
    with app.producer_or_acquire() as producer:
        for kwargs in kwargs_list:
            sent_at.append(time.time())
            ids.append(app.send_task(name, kwargs=kwargs, producer=producer).id)
    start = sent_at[0]
    if mode == "drain":
        start = time.time()
        reply = app.control.add_consumer(queue, destination=[target.node], reply=True)
        if not reply:
            raise BenchError(f"{target.node} did not resume consuming {queue}")
    metas = collect(app, ids, timeout)
    failed = [m for m in metas if m.get("status") != "SUCCESS"]
    if failed:
        raise BenchError(f"{label}: {len(failed)} task(s) failed, e.g. {failed[0]!r:.300}")
    done = [_date_done(m) for m in metas]
    seconds = max(done) - start
    if seconds <= 0:
        raise BenchError(f"{label}: non-positive duration {seconds}")
    latencies = [d - max(s, start) for d, s in zip(done, sent_at, strict=True)]
    return Batch(label, len(ids), seconds, start, [m.get("result") for m in metas], latencies)


def probe(
    app: Celery, name: str, kwargs_list: Sequence[dict[str, Any]], *, warm: bool = True
) -> list[float]:
    """Sequential round trips (send → result in the client) on an idle worker, in seconds."""
    times = []
    if warm:
        # The client's first .get() sets up its result subscription; keep it out of figures.
        app.send_task(name, kwargs=kwargs_list[0]).get(timeout=30)
    for kwargs in kwargs_list:
        t0 = time.perf_counter()
        app.send_task(name, kwargs=kwargs).get(timeout=30)
        times.append(time.perf_counter() - t0)
    return times


def warm_up(app: Celery, name: str, kwargs_list: Sequence[dict[str, Any]]) -> None:
    """A few tasks at once, so each pool process has imported and connected everything."""
    results = [app.send_task(name, kwargs=kwargs) for kwargs in kwargs_list]
    for result in results:
        result.get(timeout=60)


# -- the database --------------------------------------------------------------------------


def create_postgres(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        _drop_postgres(conn, name)
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def drop_postgres(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        _drop_postgres(conn, name)


def _drop_postgres(conn: Any, name: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
    )
    conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def insert_credentials(
    db: Engine,
    key: str,
    provider: str,
    tenants: Sequence[str],
    config_of: Callable[[str], dict[str, Any]],
) -> None:
    """Insert every credential in one transaction (not due: only the bench triggers them)."""
    from sqlalchemy import insert

    from tokenfleet.crypto import Cipher
    from tokenfleet.models import Credential

    cipher = Cipher([key])
    now = datetime.now(UTC)
    later = now + timedelta(days=365)
    rows = [
        {
            "provider": provider,
            "tenant": tenant,
            "enabled": True,
            "config_enc": cipher.encrypt(json.dumps(config_of(tenant)).encode()),
            "schedule": None,
            "current_version": 0,
            "next_due_at": later,
            "consecutive_failures": 0,
            "created_at": now,
            "updated_at": now,
        }
        for tenant in tenants
    ]
    with db.begin() as conn:
        for start in range(0, len(rows), 1000):
            conn.execute(insert(Credential), rows[start : start + 1000])


def _measured(provider: str) -> Any:
    from tokenfleet.models import Credential

    return (Credential.provider == provider) & Credential.tenant.startswith(TENANT)


def verify_versions(db: Engine, provider: str, count: int, trigger: str) -> None:
    """Every measured credential at version 1, current, with one rotated audit row."""
    from sqlalchemy import func, select

    from tokenfleet.models import AuditEntry, Credential, SecretVersion

    with db.connect() as conn:
        at_one = conn.scalar(
            select(func.count())
            .select_from(Credential)
            .where(_measured(provider), Credential.current_version == 1)
        )
        current = conn.scalar(
            select(func.count())
            .select_from(SecretVersion)
            .join(Credential, Credential.id == SecretVersion.credential_id)
            .where(_measured(provider), SecretVersion.stage == "current")
        )
        audited = conn.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(
                AuditEntry.provider == provider,
                AuditEntry.tenant.startswith(TENANT),
                AuditEntry.trigger == trigger,
                AuditEntry.outcome == "rotated",
            )
        )
        other = conn.execute(
            select(AuditEntry.outcome, AuditEntry.error_class, func.count())
            .where(
                AuditEntry.provider == provider,
                AuditEntry.tenant.startswith(TENANT),
                AuditEntry.trigger == trigger,
                AuditEntry.outcome != "rotated",
            )
            .group_by(AuditEntry.outcome, AuditEntry.error_class)
        ).all()
    problems = []
    if at_one != count:
        problems.append(f"{at_one} of {count} credentials at version 1")
    if current != count:
        problems.append(f"{current} of {count} current secret versions")
    if audited != count:
        problems.append(f"{audited} of {count} '{trigger}' audit rows say rotated")
    if other:
        problems.append(f"other outcomes: {[tuple(row) for row in other]}")
    if problems:
        raise BenchError("verification failed: " + "; ".join(problems))


def engine_durations(db: Engine, provider: str, trigger: str) -> list[float]:
    """The engine's own duration (ms) of each measured rotation, from the audit log."""
    from sqlalchemy import select

    from tokenfleet.models import AuditEntry

    with db.connect() as conn:
        return list(
            conn.scalars(
                select(AuditEntry.duration_ms).where(
                    AuditEntry.provider == provider,
                    AuditEntry.tenant.startswith(TENANT),
                    AuditEntry.trigger == trigger,
                )
            )
        )


def reset_rotations(db: Engine, provider: str, *, due: bool) -> None:
    """Forget the measured credentials' versions and audit rows; make them due if asked."""
    from sqlalchemy import delete, select, update

    from tokenfleet.models import AuditEntry, Credential, SecretVersion

    now = datetime.now(UTC)
    with db.begin() as conn:
        ids = select(Credential.id).where(_measured(provider)).scalar_subquery()
        conn.execute(delete(SecretVersion).where(SecretVersion.credential_id.in_(ids)))
        conn.execute(
            delete(AuditEntry).where(
                AuditEntry.provider == provider, AuditEntry.tenant.startswith(TENANT)
            )
        )
        conn.execute(
            update(Credential)
            .where(_measured(provider))
            .values(
                current_version=0,
                expires_at=None,
                next_due_at=now - timedelta(seconds=1) if due else now + timedelta(days=365),
                last_outcome=None,
                last_attempt_at=None,
            )
        )


def wait_promoted(db: Engine, provider: str, count: int, timeout: float) -> float:
    """Poll SQL until every measured credential has a version; return the last promoted_at."""
    from sqlalchemy import func, select

    from tokenfleet.models import Credential, SecretVersion

    deadline = time.monotonic() + timeout
    done = 0
    while True:
        with db.connect() as conn:
            done = int(
                conn.scalar(
                    select(func.count())
                    .select_from(Credential)
                    .where(_measured(provider), Credential.current_version >= 1)
                )
                or 0
            )
            if done >= count:
                last = conn.scalar(
                    select(func.max(SecretVersion.promoted_at))
                    .join(Credential, Credential.id == SecretVersion.credential_id)
                    .where(_measured(provider))
                )
                if last is None:
                    raise BenchError("no promoted_at after the sweep")
                return float(last.timestamp())
        if time.monotonic() > deadline:
            raise BenchError(f"sweep: {done} of {count} credentials rotated before the timeout")
        time.sleep(0.1)


# -- the report ----------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(values: Sequence[float], scale: float = 1000.0) -> str:
    if not values:
        return "-"
    return f"p50 {pct(values, 50) * scale:7.2f} ms  p99 {pct(values, 99) * scale:7.2f} ms"


@dataclass
class Round:
    baseline: Batch
    direct: Batch

    @property
    def ratio(self) -> float:
        return self.direct.rate / self.baseline.rate


def _median_round(rounds: Sequence[Round]) -> Round:
    """The round with the median ratio (the lower middle one for an even count)."""
    ordered = sorted(rounds, key=lambda r: r.ratio)
    return ordered[(len(ordered) - 1) // 2]


@dataclass
class Report:
    rounds: list[Round]
    sweep_seconds: float | None
    probe_baseline: list[float]
    probe_rotate: list[float]
    engine_ms: list[float]
    sweep_engine_ms: list[float]

    @property
    def median(self) -> Round:
        return _median_round(self.rounds)

    @property
    def ratio(self) -> float:
        return self.median.ratio

    def print(self, header: Mapping[str, str]) -> None:
        mid = self.median
        n = mid.direct.count
        many = len(self.rounds) > 1
        width = max(len(k) for k in header)
        print()
        for key, value in header.items():
            print(f"  {key:<{width}}  {value}")
        print()
        rows: list[tuple[str, str, str, str]] = [("measurement", "tasks", "seconds", "per second")]
        for index, rnd in enumerate(self.rounds, 1):
            tag = f" (round {index})" if many else ""
            rows.append(
                (
                    f"baseline: raw Celery no-op{tag}",
                    str(rnd.baseline.count),
                    f"{rnd.baseline.seconds:.3f}",
                    f"{rnd.baseline.rate:.1f}",
                )
            )
            rows.append(
                (
                    f"rotations: tokenfleet.rotate{tag}",
                    str(rnd.direct.count),
                    f"{rnd.direct.seconds:.3f}",
                    f"{rnd.direct.rate:.1f}",
                )
            )
        if self.sweep_seconds is not None:
            rows.append(
                (
                    "rotations: one tokenfleet.sweep",
                    str(n),
                    f"{self.sweep_seconds:.3f}",
                    f"{n / self.sweep_seconds:.1f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for index, row in enumerate(rows):
            print(
                f"  {row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  "
                f"{row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}"
            )
            if index == 0:
                print("  " + "  ".join("-" * w for w in widths))
        print()
        verdict = "meets" if self.ratio >= GOAL else "BELOW"
        label = "median ratio rotate / baseline" if many else "ratio rotate / baseline"
        print(f"  {label:<32}  {self.ratio:6.3f}   ({verdict} the {GOAL} goal)")
        if many:
            print("    per round: " + ", ".join(f"{r.ratio:.3f}" for r in self.rounds))
        if self.sweep_seconds is not None:
            sweep_ratio = (n / self.sweep_seconds) / mid.baseline.rate
            where = "   (against the median round's baseline)" if many else ""
            print(f"  {'ratio sweep / baseline':<32}  {sweep_ratio:6.3f}{where}")
        print()
        print("  per task (sequential round trip, idle worker, client send -> result):")
        print(f"    no-op                   {ms(self.probe_baseline)}")
        print(f"    rotate                  {ms(self.probe_rotate)}")
        # The engine stamps duration_ms before its promote transaction and the Redis publish.
        print("  engine time per rotation up to promote (audit duration_ms, in the worker):")
        print(f"    direct batch            {ms(self.engine_ms, 1.0)}")
        if self.sweep_engine_ms:
            print(f"    sweep batch             {ms(self.sweep_engine_ms, 1.0)}")
        print("  queue wait + run in the timed batches (from consumer start):")
        print(f"    no-op                   {ms(mid.baseline.latencies)}")
        print(f"    rotate                  {ms(mid.direct.latencies)}")
        print()


# -- the run -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"\nbench FAILED: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    from tokenfleet.crypto import generate_key

    n: int = args.tenants
    tenants = [f"{TENANT}{i:06d}" for i in range(n)]
    warm = [f"{WARMUP}{i:03d}" for i in range(max(args.warmup, args.probe, 1))]
    key = generate_key()

    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="tokenfleet-bench-"))
        # Logs stay for a failed run (or with --keep); removed last, after the workers stop.
        succeeded: list[bool] = []

        def cleanup() -> None:
            if succeeded and not args.keep:
                _remove_tree(tmp)

        stack.callback(cleanup)
        state = tmp / "state"
        state.mkdir()

        # -- database --------------------------------------------------------------
        if args.sqlite:
            database_url = f"sqlite:///{tmp}/bench.db"
            backend = "sqlite"
        elif args.database_url:
            database_url = args.database_url
            backend = database_url.split(":", 1)[0]
        else:
            database_url = create_postgres(PG_SERVER, PG_DB)
            backend = "postgresql"
            if not args.keep:
                stack.callback(drop_postgres, PG_SERVER, PG_DB)

        env = fleet_env(
            redis_url=args.redis_url, database_url=database_url, key=key, state_dir=state
        )
        # The client apps in this process read the same settings as the workers.
        for name in list(os.environ):
            if name.startswith("TOKENFLEET_") or name in ("BROKER_URL", "RESULT_BACKEND"):
                del os.environ[name]
        os.environ.update(
            {k: v for k, v in env.items() if k.startswith("TOKENFLEET_") or k.endswith("_URL")}
        )

        import celery
        import redis

        from tokenfleet.db import make_engine, migrate

        client = redis.Redis.from_url(args.redis_url)
        client.flushdb()
        client.close()

        db = make_engine(database_url)
        stack.callback(db.dispose)
        migrate(db)

        # -- provider ----------------------------------------------------------------
        if args.provider == "webkassa-sandbox":
            from tokenfleet.sandbox.webkassa import WebkassaSandbox

            sandbox = WebkassaSandbox(api_key="WKD-BENCH", max_tokens=4 * (n + len(warm)) + 100)
            stack.enter_context(sandbox)
            provider = "webkassa"

            def config_of(tenant: str) -> dict[str, Any]:
                return {
                    "base_url": sandbox.url,
                    "login": sandbox.login,
                    "password": "sandbox-password",
                    "api_key": "WKD-BENCH",
                }

        else:
            provider = "bench"

            def config_of(tenant: str) -> dict[str, Any]:
                return {"seed": tenant}

        t0 = time.perf_counter()
        insert_credentials(db, key, provider, [*tenants, *warm], config_of)
        print(
            f"setup: {backend} database, {n} + {len(warm)} warm-up credentials "
            f"of '{provider}' in {time.perf_counter() - t0:.1f}s; logs in {tmp}",
            flush=True,
        )

        from bench.noop_app import QUEUE, TASK
        from bench.noop_app import app as noop_app
        from tasks.app import app as fleet_app

        run_kw: dict[str, Any] = {"mode": args.mode, "timeout": args.timeout}
        worker_kw: dict[str, Any] = {
            "env": env,
            "concurrency": args.concurrency,
            "loglevel": args.loglevel,
        }

        # -- both workers, warmed up --------------------------------------------------
        print("starting the no-op and the tokenfleet workers …", flush=True)
        noop = stack.enter_context(
            worker(noop_app, "bench.noop_app", QUEUE, log=tmp / "noop-worker.log", **worker_kw)
        )
        fleet = stack.enter_context(
            worker(fleet_app, args.fleet_app, "light", log=tmp / "fleet-worker.log", **worker_kw)
        )
        warm_up(noop_app, TASK, [{}] * args.warmup)
        warm_up(
            fleet_app, ROTATE, [{"provider": provider, "tenant": t} for t in warm[: args.warmup]]
        )

        # -- rounds: baseline, then rotations, measured the same way -------------------
        rotate_kwargs = [{"provider": provider, "tenant": t, "trigger": "manual"} for t in tenants]
        rounds: list[Round] = []
        engine_ms: list[float] = []
        for index in range(1, args.rounds + 1):
            if index > 1:
                reset_rotations(db, provider, due=False)
            baseline = run_batch("baseline", noop, QUEUE, TASK, [{}] * n, **run_kw)
            trace(args, f"baseline{index}", baseline.start, baseline.start + baseline.seconds)
            direct = run_batch("rotate", fleet, "light", ROTATE, rotate_kwargs, **run_kw)
            trace(args, f"rotate{index}", direct.start, direct.start + direct.seconds)
            bad = [r for r in direct.results if not _rotated(r)]
            if bad:
                raise BenchError(f"{len(bad)} rotation(s) did not rotate, e.g. {bad[0]!r:.300}")
            verify_versions(db, provider, n, "manual")
            engine_ms = engine_durations(db, provider, "manual")
            rounds.append(Round(baseline, direct))
            print(
                f"round {index}: baseline {baseline.rate:.1f} no-op tasks/s, "
                f"{direct.rate:.1f} rotations/s (all {n} verified), ratio {rounds[-1].ratio:.3f}",
                flush=True,
            )

        # -- scheduled path: one sweep ---------------------------------------------------
        sweep_seconds: float | None = None
        sweep_engine_ms: list[float] = []
        if not args.no_sweep:
            reset_rotations(db, provider, due=True)
            start = time.time()
            swept = fleet_app.send_task(SWEEP, kwargs={"provider": provider})
            last = wait_promoted(db, provider, n, args.timeout)
            sweep_seconds = last - start
            summary = swept.get(timeout=30)
            if not isinstance(summary, dict) or summary.get("claimed") != n:
                raise BenchError(f"sweep claimed {summary!r:.200}, expected {n}")
            verify_versions(db, provider, n, "schedule")
            sweep_engine_ms = engine_durations(db, provider, "schedule")
            print(f"sweep: {n / sweep_seconds:.1f} rotations/s, all {n} verified", flush=True)
            trace(args, "sweep", start, last)

        # -- per-task latency on idle workers ------------------------------------------------
        probe_baseline = probe(noop_app, TASK, [{}] * args.probe)
        probe_rotate = probe(
            fleet_app, ROTATE, [{"provider": provider, "tenant": t} for t in warm[: args.probe]]
        )

        report = Report(
            rounds=rounds,
            sweep_seconds=sweep_seconds,
            probe_baseline=probe_baseline,
            probe_rotate=probe_rotate,
            engine_ms=engine_ms,
            sweep_engine_ms=sweep_engine_ms,
        )
        report.print(
            {
                "tenants": str(n),
                "provider": args.provider,
                "database": backend,
                "workers": f"{args.concurrency} processes (prefork), log level {args.loglevel}",
                "mode": f"{args.mode}, {args.rounds} round(s)",
                "rotation app": f"celery -A {args.fleet_app}",
                "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
                f"Celery {celery.__version__}",
                "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            }
        )
        succeeded.append(True)
        if args.fail_below is not None and report.ratio < args.fail_below:
            return 1
        return 0
    return 0  # pragma: no cover - ExitStack does not swallow exceptions


def trace(args: argparse.Namespace, label: str, start: float, end: float) -> None:
    if args.trace:
        print(f"trace: {label} {start:.3f} {end:.3f}", flush=True)


def _rotated(result: Any) -> bool:
    return (
        isinstance(result, dict)
        and result.get("status") == "rotated"
        and result.get("version") == 1
    )


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
