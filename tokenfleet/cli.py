"""The ``tokenfleet`` command: run the fleet, look at it, and steer it.

Every command reads the same settings as the workers (environment and ``.env``). Errors
are one line on stderr and exit code 2; ``--json`` prints machine-readable output.
Secrets are never printed.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from providers.browser import Health

from . import fleetfile
from .errors import FleetTimeout, InvalidArguments, TokenfleetError
from .runtime import Runtime
from .schedule import parse_duration
from .settings import load_settings

app = typer.Typer(
    help="Keep API tokens, keys and sessions fresh.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
credentials_app = typer.Typer(help="Declared credentials.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys.", no_args_is_help=True)
app.add_typer(credentials_app, name="credentials")
app.add_typer(keys_app, name="keys")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant name.")]


@contextmanager
def _runtime() -> Iterator[Runtime]:
    rt = Runtime(load_settings())
    try:
        yield rt
    finally:
        rt.close()


def _age(when: datetime | None, now: datetime) -> str:
    """``when - now`` as a short span (``3h``, ``-12m``), or ``-`` when unknown."""
    if when is None:
        return "-"
    seconds = int((when - now).total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{sign}{seconds // size}{unit}"
    return f"{sign}{seconds}s"


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema, then load the fleet file."""
    with _runtime() as rt:
        rt.settings.state_dir.mkdir(parents=True, exist_ok=True)
        rt.migrate()
        counts = rt.load_fleet_file()
    out.print(
        f"schema up to date; fleet file {rt.settings.fleet_file}: "
        f"{counts['created']} created, {counts['updated']} updated, "
        f"{counts['unchanged']} unchanged"
    )


@app.command()
def status(
    as_json: JsonOpt = False,
    probe: Annotated[
        bool,
        typer.Option(help="Probe what browser providers depend on (FlareSolverr, Chromium)."),
    ] = True,
) -> None:
    """One line per credential: version, age, expiry, next due, last outcome, circuit.

    Then the health of what credentials depend on (a FlareSolverr, a Chromium), probed now:
    one probe per distinct target, a few seconds at most each.
    """
    with _runtime() as rt:
        now = rt.clock.now()
        rows = rt.store.credentials()
        versions = {}
        for state in rows:
            current = [v for v in rt.store.versions(state.id) if v.stage == "current"]
            versions[state.id] = current[0].promoted_at if current else None
        health = rt.engine.health() if probe else {}
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "provider": s.provider,
                        "tenant": s.tenant,
                        "enabled": s.enabled,
                        "version": s.current_version,
                        "promoted_at": _iso(versions[s.id]),
                        "expires_at": _iso(s.expires_at),
                        "next_due_at": _iso(s.next_due_at),
                        "last_outcome": s.last_outcome,
                        "last_error": s.last_error,
                        "circuit_open_until": _iso(s.circuit_open_until),
                        "dependencies": [
                            h.to_dict() for h in health.get((s.provider, s.tenant), ())
                        ],
                    }
                    for s in rows
                ]
            )
        )
        return
    table = Table(title=f"tokenfleet — {len(rows)} credential(s)")
    for column in (
        "provider",
        "tenant",
        "version",
        "age",
        "expires in",
        "next due",
        "last",
        "circuit",
    ):
        table.add_column(column)
    for s in rows:
        promoted = versions[s.id]
        circuit = "open" if s.circuit_open_until and s.circuit_open_until > now else "closed"
        last = s.last_outcome or "-"
        if s.last_error:
            last = f"{last} ({s.last_error})"
        table.add_row(
            s.provider,
            s.tenant + ("" if s.enabled else " [disabled]"),
            str(s.current_version or "-"),
            _age(now, promoted) if promoted else "-",
            _age(s.expires_at, now),
            _age(s.next_due_at, now),
            last,
            circuit,
        )
    out.print(table)
    if health:
        out.print(_health_table(health))


def _health_table(health: dict[tuple[str, str], tuple[Health, ...]]) -> Table:
    users: dict[Health, list[str]] = {}
    for (provider, tenant), results in health.items():
        for result in results:
            users.setdefault(result, []).append(f"{provider}/{tenant}")
    table = Table(title="dependencies")
    for column in ("component", "target", "state", "detail", "used by"):
        table.add_column(column)
    for result, names in users.items():
        used_by = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        table.add_row(
            result.component,
            result.target,
            "[green]up[/]" if result.ok else "[red]DOWN[/]",
            result.detail,
            used_by,
        )
    return table


def _print_outcome(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(result))
    else:
        line = f"{result.get('provider')}/{result.get('tenant')}: {result.get('status')}"
        if result.get("version") is not None:
            line += f" v{result['version']}"
        if result.get("fingerprint"):
            line += f" fp={result['fingerprint']}"
        if result.get("error_class"):
            line += f" — {result['error_class']}: {result.get('error')}"
        out.print(line)
    if result.get("error_class"):
        raise typer.Exit(1)


def _send(name: str, kwargs: dict[str, Any], wait: bool, timeout: float) -> dict[str, Any]:
    from tasks.app import app as celery_app

    result = celery_app.send_task(name, kwargs=kwargs)
    if not wait:
        return {"status": "queued", "task_id": result.id, **kwargs}
    with err.status(
        f"{name} {kwargs.get('provider')}/{kwargs.get('tenant')}: waiting for a worker…"
    ):
        try:
            value: dict[str, Any] = result.get(timeout=timeout)
        except Exception as exc:  # celery raises TimeoutError of its own
            raise FleetTimeout(
                f"no result within {timeout:g}s ({type(exc).__name__}); is a worker running?"
            ) from None
    return value


@app.command()
def rotate(
    provider: str,
    tenant: TenantOpt = "default",
    wait: Annotated[bool, typer.Option(help="Wait for the worker's result.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
    local: Annotated[bool, typer.Option(help="Rotate in this process, without a worker.")] = False,
    reveal: Annotated[
        bool,
        typer.Option("--reveal", help="Also print the secret itself (careful: terminals log)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rotate a credential now (trigger ``manual``), through a worker unless ``--local``.

    The new secret is never shown unless ``--reveal`` is given.
    """
    if local:
        with _runtime() as rt:
            result = rt.engine.rotate(provider, tenant, trigger="manual").to_dict()
    else:
        result = _send("tokenfleet.rotate", {"provider": provider, "tenant": tenant}, wait, timeout)
    if reveal and result.get("version"):
        with _runtime() as rt:
            current = rt.store.current(rt.store.require(provider, tenant).id)
        if current is not None:
            result["value"] = current[1].reveal()
            if current[1].bound:
                result["bound"] = dict(current[1].bound)
    _print_outcome(result, as_json)
    if "value" in result and not as_json:
        out.print(result["value"], markup=False, highlight=False, soft_wrap=True)


@app.command()
def check(
    provider: str,
    tenant: TenantOpt = "default",
    local: Annotated[bool, typer.Option(help="Check in this process, without a worker.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
    as_json: JsonOpt = False,
) -> None:
    """Validate a credential's current version without replacing it."""
    if local:
        with _runtime() as rt:
            result = rt.engine.check(provider, tenant).to_dict()
    else:
        result = _send("tokenfleet.check", {"provider": provider, "tenant": tenant}, True, timeout)
    _print_outcome(result, as_json)


@app.command()
def log(
    provider: Annotated[str | None, typer.Option(help="Only this provider.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    since: Annotated[str | None, typer.Option(help="Only newer than, e.g. 1h, 2d.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only attempts with an error.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The audit log, newest first."""
    after = None
    if since is not None:
        try:
            after = datetime.now(UTC) - parse_duration(since)
        except ValueError as exc:
            raise InvalidArguments(f"--since: {exc}") from None
    with _runtime() as rt:
        rows = rt.store.audit_log(
            provider=provider, tenant=tenant, since=after, failed_only=failed, limit=limit
        )
    fields = (
        "started_at", "provider", "tenant", "action", "trigger", "outcome", "error_class",
        "error_message", "duration_ms", "version_before", "version_after", "fingerprint",
        "attempt", "task_id",
    )  # fmt: skip
    if as_json:
        data = [{f: getattr(r, f) for f in fields} for r in rows]
        out.print_json(json.dumps(data, default=str))
        return
    table = Table(title="audit log")
    for column in ("when", "credential", "action", "trigger", "outcome", "versions", "ms", "error"):
        table.add_column(column)
    for r in rows:
        versions = f"{r.version_before}→{r.version_after}"
        error = f"{r.error_class}: {r.error_message}" if r.error_class else ""
        table.add_row(
            r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{r.provider}/{r.tenant}",
            r.action,
            r.trigger,
            r.outcome,
            versions,
            f"{r.duration_ms:.0f}",
            error,
        )
    out.print(table)


@credentials_app.command("list")
def credentials_list(as_json: JsonOpt = False) -> None:
    """Declared credentials and their schedules (never their secrets)."""
    with _runtime() as rt:
        rows = [
            {
                "provider": s.provider,
                "tenant": s.tenant,
                "enabled": s.enabled,
                "schedule": (s.schedule or rt.registry.get(s.provider).default_schedule).describe()
                if s.provider in rt.registry
                else "(unknown provider)",
            }
            for s in rt.store.credentials()
        ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table()
    for column in ("provider", "tenant", "enabled", "schedule"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("provider", "tenant", "enabled", "schedule")))
    out.print(table)


@credentials_app.command("add")
def credentials_add(
    provider: str,
    settings_: Annotated[
        list[str],
        typer.Option(
            "--set",
            help="A config field, key=value; ${VAR} takes the value from the environment.",
        ),
    ],
    tenant: TenantOpt = "default",
    schedule: Annotated[
        str | None, typer.Option(help="Cron ('0 5 * * *') or 'every 3h'; default: provider's.")
    ] = None,
) -> None:
    """Declare (or update) a credential without the fleet file; it is due at once."""
    config: dict[str, Any] = {}
    for item in settings_:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArguments(f"--set {item!r}: expected key=value")
        config[key.strip()] = value
    entry: dict[str, Any] = {"provider": provider, "tenant": tenant, "config": config}
    if schedule is not None:
        entry["schedule"] = schedule
    with _runtime() as rt:
        (spec,) = fleetfile.parse_specs({"credential": [entry]}, rt.registry)
        result = rt.store.upsert(
            spec.provider, spec.tenant, spec.config, spec.schedule, enabled=True,
            now=rt.clock.now(),
        )  # fmt: skip
    out.print(f"{provider}/{tenant}: {result}")


@credentials_app.command("load")
def credentials_load() -> None:
    """Validate the fleet file and load it into the database (nothing changes if invalid)."""
    with _runtime() as rt:
        counts = rt.load_fleet_file()
    out.print(
        f"{counts['created']} created, {counts['updated']} updated, {counts['unchanged']} unchanged"
    )


def _set_enabled(provider: str, tenant: str, enabled: bool) -> None:
    with _runtime() as rt:
        rt.store.set_enabled(provider, tenant, enabled, rt.clock.now())
    out.print(f"{provider}/{tenant}: {'enabled' if enabled else 'disabled'}")


@credentials_app.command("enable")
def credentials_enable(provider: str, tenant: TenantOpt = "default") -> None:
    """Let the schedule rotate this credential again."""
    _set_enabled(provider, tenant, True)


@credentials_app.command("disable")
def credentials_disable(provider: str, tenant: TenantOpt = "default") -> None:
    """Stop scheduled rotations of this credential (its current version stays)."""
    _set_enabled(provider, tenant, False)


@credentials_app.command("remove")
def credentials_remove(
    provider: str,
    tenant: TenantOpt = "default",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete a credential with all its versions (its audit rows stay)."""
    if not yes:
        typer.confirm(f"Remove {provider}/{tenant} and every stored version?", abort=True)
    with _runtime() as rt:
        rt.store.remove(provider, tenant)
    out.print(f"{provider}/{tenant}: removed")


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a new Fernet key (put it first in TOKENFLEET_ENCRYPTION_KEYS)."""
    from .crypto import generate_key

    out.print(generate_key())


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt every stored secret and config under the primary (first) key."""
    with _runtime() as rt:
        count = rt.store.reencrypt()
    out.print(f"re-encrypted {count} value(s) under the primary key")


@app.command()
def up(
    concurrency: Annotated[int, typer.Option(help="Processes of the light worker.")] = 2,
    flower: Annotated[bool, typer.Option(help="Start Flower too (if installed).")] = True,
) -> None:
    """Run the whole fleet here: Redis if needed, sandbox in dev mode, Beat, workers, Flower."""
    from .fleet import Fleet

    settings = load_settings()
    out.print(f"tokenfleet up ({settings.env} mode)")
    fleet = Fleet(settings, say=lambda line: out.print(line, markup=False, highlight=False),
                  concurrency=concurrency, flower=flower)  # fmt: skip
    signals = 0

    def on_signal(*_: Any) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            err.print("stopping: workers finish their running rotations (Ctrl-C again to kill)")
        else:
            fleet.kill()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        fleet.start()
        rt = fleet.runtime()
        try:
            while not signals:
                dead = fleet.poll(rt)
                if dead is not None:
                    err.print(f"{dead} exited; stopping the fleet (see its log)")
                    break
                time.sleep(1.0)
            fleet.poll(rt)
        finally:
            rt.close()
    finally:
        fleet.stop(force=signals > 1)
        out.print("fleet stopped")


def main() -> None:
    """Console entry point: run the app, turning tokenfleet errors into one clear line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = app(standalone_mode=False)
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        if isinstance(code, int) and code:
            sys.exit(code)
    except TokenfleetError as exc:
        err.print(f"error: {type(exc).__name__}: {exc.message}", markup=False)
        sys.exit(2)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
