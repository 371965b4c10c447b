"""The deployment files agree with the Celery configuration and with each other.

Nothing here builds an image or starts a container: ``docker-compose.yml``, the
``Dockerfile``, ``.dockerignore`` and the ``Makefile`` are parsed and checked against
``celeryconfig`` (queues), :mod:`tokenfleet.queues` (time limits) and
:mod:`tokenfleet.settings` (environment names), so a change that breaks one of them
fails here instead of on the production host.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import yaml

from tokenfleet.queues import QUEUES
from tokenfleet.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
MAKEFILE = REPO / "Makefile"
PYPROJECT = REPO / "pyproject.toml"

INFRA = ("redis", "postgres", "flaresolverr")
APP_SERVICES = ("migrations", "beat", "worker-light", "worker-browser", "flower")
WORKERS = ("worker-light", "worker-browser")
STATE_DIR = "/app/var"
FLEET_FILE = "/app/fleet.toml"

# Options of the `celery` command itself that take a value (they precede the subcommand).
_CELERY_GLOBAL_OPTIONS = {"-A", "--app", "-b", "--broker", "--result-backend", "--loader"}
_CELERY_GLOBAL_OPTIONS |= {"--config", "--workdir"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|h|m|s)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# -- helpers ------------------------------------------------------------------------------


def _argv(command: Any) -> list[str]:
    """A compose ``command`` (string or list) as an argument vector."""
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def _option(argv: list[str], *names: str) -> str | None:
    """The value of the first of ``names`` in ``argv`` (``-Q x``, ``-Qx``, ``--queues=x``)."""
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name:
                return argv[index + 1] if index + 1 < len(argv) else None
            if name.startswith("--") and arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
            if not name.startswith("--") and arg.startswith(name) and len(arg) > len(name):
                return arg[len(name) :]
    return None


def _celery_subcommand(argv: list[str]) -> tuple[int, str] | None:
    """Position and name of the celery subcommand (``worker``, ``beat``, …)."""
    if not argv or argv[0] != "celery":
        return None
    index = 1
    while index < len(argv):
        arg = argv[index]
        if arg in _CELERY_GLOBAL_OPTIONS:
            index += 2
            continue
        if arg.startswith("-"):
            index += 1
            continue
        return index, arg
    return None


def _healthcheck_argv(service: dict[str, Any]) -> tuple[str, list[str]]:
    """A healthcheck's kind (``CMD``/``CMD-SHELL``) and its command as an argv."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return "CMD-SHELL", shlex.split(test)
    kind, *rest = (str(part) for part in test)
    if kind == "CMD-SHELL":
        return kind, shlex.split(" ".join(rest))
    return kind, rest


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def _requires_variable(value: str, name: str) -> bool:
    """True when ``value`` is exactly ``${name:?message}`` (or ``${name?message}``)."""
    return re.fullmatch(rf"\$\{{{re.escape(name)}:?\?[^}}]+\}}", value) is not None


def _default_of(value: str, name: str) -> str | None:
    match = re.fullmatch(rf"\$\{{{re.escape(name)}:?-([^}}]*)\}}", value)
    return match.group(1) if match else None


def _seconds(duration: Any) -> float:
    """A compose duration (``320s``, ``5m20s``, ``1h``) in seconds."""
    text = str(duration).strip()
    parts = _DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {duration!r}"
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _volume_targets(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each mount of ``service`` by container path, in long form."""
    mounts: dict[str, dict[str, Any]] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            mounts[target] = {
                "type": kind,
                "source": source,
                "target": target,
                "read_only": "ro" in (mode[0].split(",") if mode else []),
            }
        else:
            mounts[volume["target"]] = volume
    return mounts


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as ``(KEYWORD, arguments)``, continuations joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a line continuation"
    return instructions


def _pip_installs(run: str) -> list[list[str]]:
    """Each ``pip install …`` in a RUN instruction, as the arguments after ``install``."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [
        words[2:]
        for words in commands
        if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install"
    ]


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def celeryconfig() -> ModuleType:
    # Imported here, after tests/conftest.py has pointed the environment at test services.
    return importlib.import_module("celeryconfig")


@pytest.fixture(scope="module")
def worker_queues(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Every service that runs ``celery … worker``, with the queues it consumes."""
    workers = {}
    for name, service in services.items():
        argv = _argv(service.get("command"))
        sub = _celery_subcommand(argv)
        if sub and sub[1] == "worker":
            queues = _option(argv, "-Q", "--queues")
            assert queues, f"{name}: a worker must name its queues with -Q"
            workers[name] = [queue.strip() for queue in queues.split(",") if queue.strip()]
    return workers


# -- compose: services and queues ---------------------------------------------------------


def test_compose_defines_every_fleet_service_and_no_version_key(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert "version" not in compose, "the compose spec has no `version:`; remove it"
    missing = set(INFRA + APP_SERVICES) - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_worker_queues_exist_in_celeryconfig_and_together_cover_every_queue(
    celeryconfig: ModuleType, worker_queues: dict[str, list[str]]
) -> None:
    declared = {queue.name for queue in celeryconfig.task_queues}
    assert declared == set(QUEUES), "celeryconfig.task_queues and tokenfleet.queues disagree"
    assert set(worker_queues) == set(WORKERS)
    for name, queues in worker_queues.items():
        unknown = set(queues) - declared
        assert not unknown, f"{name} consumes undeclared queues {sorted(unknown)}"
    consumed = {queue for queues in worker_queues.values() for queue in queues}
    assert consumed == declared, f"no worker consumes {sorted(declared - consumed)}"
    assert celeryconfig.task_default_queue in consumed


def test_browser_worker_runs_a_single_process(
    services: dict[str, dict[str, Any]], worker_queues: dict[str, list[str]]
) -> None:
    browser_workers = [name for name, queues in worker_queues.items() if "browser" in queues]
    assert browser_workers == ["worker-browser"]
    argv = _argv(services["worker-browser"]["command"])
    assert _option(argv, "-c", "--concurrency") == "1", "the browser worker must run -c 1"


def test_every_celery_command_uses_the_tasks_app_as_a_global_option(
    services: dict[str, dict[str, Any]],
) -> None:
    commands = {}
    for name, service in services.items():
        commands[name] = _argv(service.get("command"))
        if "healthcheck" in service:
            commands[f"{name} healthcheck"] = _healthcheck_argv(service)[1]
    celery_commands = {name: argv for name, argv in commands.items() if argv[:1] == ["celery"]}
    assert {"beat", "worker-light", "worker-browser", "flower"} <= set(celery_commands)
    for name, argv in celery_commands.items():
        sub = _celery_subcommand(argv)
        assert sub, f"{name}: no celery subcommand in {argv}"
        app = _option(argv[: sub[0]], "-A", "--app")
        # Celery 5 only accepts -A before the subcommand.
        assert app == "tasks", f"{name}: expected `celery -A tasks {sub[1]} …`, got {argv}"


def test_beat_and_workers_and_flower_run_the_expected_celery_subcommands(
    services: dict[str, dict[str, Any]],
) -> None:
    expected = {
        "beat": "beat",
        "worker-light": "worker",
        "worker-browser": "worker",
        "flower": "flower",
    }
    for name, subcommand in expected.items():
        sub = _celery_subcommand(_argv(services[name]["command"]))
        assert sub and sub[1] == subcommand, f"{name} should run `celery -A tasks {subcommand}`"


def test_every_service_built_from_the_repository_shares_one_image_and_build(
    services: dict[str, dict[str, Any]],
) -> None:
    built = {name for name, service in services.items() if "build" in service}
    assert built == set(APP_SERVICES), "exactly the tokenfleet services build this repository"
    images = {services[name].get("image") for name in APP_SERVICES}
    builds = [services[name]["build"] for name in APP_SERVICES]
    assert len(images) == 1 and None not in images, f"one image for all, got {images}"
    assert all(build == builds[0] for build in builds), "every service must build the same way"
    build = builds[0] if isinstance(builds[0], dict) else {"context": builds[0]}
    context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
    assert context == REPO
    assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_worker_stop_grace_period_exceeds_its_queues_hard_time_limit(
    services: dict[str, dict[str, Any]], worker_queues: dict[str, list[str]]
) -> None:
    for name, queues in worker_queues.items():
        service = services[name]
        hard = max(QUEUES[queue].hard for queue in queues)
        assert "stop_grace_period" in service, f"{name}: default 10 s would kill a rotation"
        grace = _seconds(service["stop_grace_period"])
        assert grace > hard, f"{name}: stop_grace_period {grace:.0f}s <= hard limit {hard:.0f}s"
        # SIGTERM is Celery's warm shutdown; SIGQUIT/SIGINT-twice would be a cold one.
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_celery_services_run_under_an_init_process(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if _argv(service.get("command"))[:1] == ["celery"]:
            assert service.get("init") is True, f"{name}: set `init: true`"


# -- compose: health and start-up order ---------------------------------------------------


def test_redis_postgres_and_flaresolverr_have_healthchecks(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in INFRA:
        healthcheck = services[name].get("healthcheck")
        assert healthcheck and not healthcheck.get("disable"), f"{name} needs a healthcheck"
        kind, argv = _healthcheck_argv(services[name])
        assert kind in {"CMD", "CMD-SHELL"} and argv, f"{name}: empty healthcheck"
    assert "redis-cli" in _healthcheck_argv(services["redis"])[1]
    assert "pg_isready" in _healthcheck_argv(services["postgres"])[1]
    flaresolverr_check = " ".join(_healthcheck_argv(services["flaresolverr"])[1])
    assert ":8191/health" in flaresolverr_check, "probe FlareSolverr's cheap GET /health"


def test_dependencies_use_long_syntax_and_wait_for_healthy_infrastructure(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec.get("condition")
            if dependency in INFRA:
                assert condition == "service_healthy", f"{name} must wait for {dependency}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_beat_and_workers_wait_for_migrations_to_complete_successfully(
    services: dict[str, dict[str, Any]], worker_queues: dict[str, list[str]]
) -> None:
    for name in ["beat", *worker_queues]:
        depends_on = services[name].get("depends_on") or {}
        assert depends_on.get("migrations", {}).get("condition") == (
            "service_completed_successfully"
        ), f"{name} must start after migrations finished"
        assert depends_on.get("redis", {}).get("condition") == "service_healthy"
    for name in worker_queues:
        assert services[name]["depends_on"].get("postgres", {}).get("condition") == (
            "service_healthy"
        )
    for name, queues in worker_queues.items():
        if "browser" in queues:
            assert services[name]["depends_on"]["flaresolverr"]["condition"] == ("service_healthy")


def test_migrations_runs_tokenfleet_migrate_once_after_postgres_is_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    migrations = services["migrations"]
    assert _argv(migrations["command"]) == ["tokenfleet", "migrate"]
    assert migrations.get("restart") == "no", "a one-shot job must not be restarted"
    assert migrations["depends_on"]["postgres"]["condition"] == "service_healthy"
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert "tokenfleet" in scripts, "the image needs the `tokenfleet` console script"


def test_worker_healthchecks_ping_their_own_celery_node(
    services: dict[str, dict[str, Any]], worker_queues: dict[str, list[str]]
) -> None:
    for name in worker_queues:
        argv = _argv(services[name]["command"])
        node = _option(argv, "-n", "--hostname") or "celery@%h"
        assert node.endswith("@%h"), f"{name}: node name must be unique per container"
        kind, check = _healthcheck_argv(services[name])
        sub = _celery_subcommand(check)
        assert sub and check[sub[0] : sub[0] + 2] == ["inspect", "ping"], check
        destination = _option(check, "-d", "--destination")
        # $$ is compose's escape: the container's shell expands $HOSTNAME.
        assert destination == node.replace("%h", "$$HOSTNAME"), (name, destination)
        assert kind == "CMD-SHELL", f"{name}: $HOSTNAME needs a shell"


# -- compose: scaling and exposure --------------------------------------------------------


def test_workers_are_scalable_without_container_name_hostname_or_ports(
    services: dict[str, dict[str, Any]], worker_queues: dict[str, list[str]]
) -> None:
    for name in worker_queues:
        for key in ("container_name", "hostname", "ports"):
            assert key not in services[name], f"{name}: `{key}` breaks --scale {name}=N"


def test_only_flower_publishes_a_port_and_only_on_localhost(
    services: dict[str, dict[str, Any]],
) -> None:
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"flower"}
    flower_argv = _argv(services["flower"]["command"])
    flower_port = _option(flower_argv, "--port") or "5555"
    for port in services["flower"]["ports"]:
        if isinstance(port, dict):
            host_ip, target = port.get("host_ip"), str(port["target"])
        else:
            host_ip, _, target = str(port).split(":")
        assert host_ip == "127.0.0.1", f"Flower must not listen publicly: {port}"
        assert target == flower_port


def test_flower_basic_auth_comes_from_a_required_environment_variable(
    services: dict[str, dict[str, Any]],
) -> None:
    flower = services["flower"]
    argv = _argv(flower["command"])
    assert not any(arg.startswith(("--basic-auth", "--basic_auth")) for arg in argv), (
        "credentials must not be written into the command"
    )
    value = _environment(flower).get("FLOWER_BASIC_AUTH", "")
    assert _requires_variable(value, "FLOWER_BASIC_AUTH"), (
        f"use FLOWER_BASIC_AUTH: ${{FLOWER_BASIC_AUTH:?…}}, got {value!r}"
    )


# -- compose: environment, volumes, persistence -------------------------------------------


def test_tokenfleet_services_share_an_environment_pointing_at_compose_services(
    services: dict[str, dict[str, Any]],
) -> None:
    shared = [
        {key: value for key, value in _environment(services[name]).items() if key[:7] != "FLOWER_"}
        for name in APP_SERVICES
    ]
    assert all(env == shared[0] for env in shared), "one shared environment (the anchor)"
    env = shared[0]
    redis_url = urlsplit(env["REDIS_URL"])
    assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "redis", 6379)
    database_url = urlsplit(env["DATABASE_URL"])
    assert database_url.scheme in {"postgresql", "postgresql+psycopg"}
    assert (database_url.hostname, database_url.port) == ("postgres", 5432)
    assert "${POSTGRES_PASSWORD" in env["DATABASE_URL"]
    flaresolverr = urlsplit(env["FLARESOLVERR_URL"])
    assert (flaresolverr.hostname, flaresolverr.port, flaresolverr.path) == (
        "flaresolverr",
        8191,
        "/v1",
    )
    assert env["TOKENFLEET_ENV"] == "prod", "production must never run the sandbox"
    assert _requires_variable(env["TOKENFLEET_ENCRYPTION_KEYS"], "TOKENFLEET_ENCRYPTION_KEYS")
    zone = _default_of(env["TOKENFLEET_TIMEZONE"], "TOKENFLEET_TIMEZONE")
    assert zone and ZoneInfo(zone)
    assert env["TOKENFLEET_STATE_DIR"] == STATE_DIR
    assert env["TOKENFLEET_FLEET_FILE"] == FLEET_FILE


def test_tokenfleet_environment_names_are_settings_the_fleet_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    known = {f"TOKENFLEET_{field.upper()}" for field in Settings.model_fields}
    known |= {"REDIS_URL", "DATABASE_URL", "BROKER_URL", "RESULT_BACKEND"}
    # Read by the browser providers, not by Settings.
    known |= {"FLARESOLVERR_URL"}
    for name in APP_SERVICES:
        unknown = {key for key in _environment(services[name]) if not key.startswith("FLOWER_")}
        unknown -= known
        assert not unknown, f"{name}: misspelt or unused settings {sorted(unknown)}"


def test_tokenfleet_services_read_an_optional_env_file(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in APP_SERVICES:
        env_files = services[name].get("env_file")
        assert isinstance(env_files, list), f"{name}: env_file .env (required: false)"
        assert {"path": ".env", "required": False} in env_files


def test_postgres_password_is_required_and_data_is_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    postgres = services["postgres"]
    env = _environment(postgres)
    assert _requires_variable(env["POSTGRES_PASSWORD"], "POSTGRES_PASSWORD")
    database_url = _environment(services["migrations"])["DATABASE_URL"]
    user_db = urlsplit(database_url)
    assert user_db.username == env["POSTGRES_USER"]
    assert user_db.path.lstrip("/") == env["POSTGRES_DB"]
    data = _volume_targets(postgres)["/var/lib/postgresql/data"]
    assert data["type"] == "volume" and data["source"] in (compose.get("volumes") or {})


def test_redis_keeps_an_append_only_file_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    redis_service = services["redis"]
    argv = _argv(redis_service.get("command"))
    assert _option(argv, "--appendonly") == "yes", "queued rotations must survive a restart"
    data = _volume_targets(redis_service)["/data"]
    assert data["type"] == "volume" and data["source"] in (compose.get("volumes") or {})


def test_every_named_volume_used_is_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for mount in _volume_targets(service).values():
            if mount["type"] == "volume":
                assert mount["source"] in declared, f"{name}: undeclared volume {mount}"


def test_fleet_file_is_mounted_read_only_where_it_is_loaded(
    services: dict[str, dict[str, Any]], worker_queues: dict[str, list[str]]
) -> None:
    for name in ["migrations", *worker_queues]:
        mount = _volume_targets(services[name]).get(FLEET_FILE)
        assert mount, f"{name} loads the fleet file but does not mount it"
        assert mount["type"] == "bind" and mount["source"] == "./fleet.toml"
        assert mount.get("read_only") is True, f"{name}: mount fleet.toml read-only"


def test_beat_keeps_its_schedule_in_the_state_dir_on_a_volume_and_is_not_scaled(
    celeryconfig: ModuleType, services: dict[str, dict[str, Any]]
) -> None:
    beat = services["beat"]
    schedule = _option(_argv(beat["command"]), "-s", "--schedule")
    assert schedule, "beat needs -s in the state dir"
    assert str(Path(schedule).parent) == _environment(beat)["TOKENFLEET_STATE_DIR"]
    assert Path(schedule).name == Path(celeryconfig.beat_schedule_filename).name
    state = _volume_targets(beat).get(STATE_DIR)
    assert state and state["type"] == "volume", "beat's schedule belongs on a volume"
    assert beat.get("scale", 1) == 1 and beat.get("deploy", {}).get("replicas", 1) == 1


# -- Dockerfile, .dockerignore, Makefile --------------------------------------------------


def test_dockerfile_builds_on_python_311_slim_in_app_with_unbuffered_output() -> None:
    instructions = _dockerfile()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert froms and froms[-1].split()[0] == "python:3.11-slim"
    workdirs = [args for keyword, args in instructions if keyword == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/app"
    env = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(args) if "=" in word)
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("TOKENFLEET_STATE_DIR", STATE_DIR) == STATE_DIR


def test_dockerfile_installs_the_project_with_flower_but_without_dev_extras() -> None:
    installs = [
        args for keyword, run in _dockerfile() if keyword == "RUN" for args in _pip_installs(run)
    ]
    assert installs, "the Dockerfile never runs pip install"
    targets = [arg for args in installs for arg in args if not arg.startswith("-")]
    assert any(re.fullmatch(r"\.(\[[\w,-]*\])?", target) for target in targets), (
        f"the project itself (`.`) is never installed: {installs}"
    )
    assert ".[flower]" in targets
    for args in installs:
        assert "-e" not in args and "--editable" not in args, "no editable install in the image"
        for arg in args:
            extras = re.fullmatch(r"\.\[([\w,-]*)\]", arg)
            assert not (extras and "dev" in extras.group(1).split(",")), "no dev extras"


def test_dockerfile_runs_as_a_non_root_user_created_in_the_image() -> None:
    instructions = _dockerfile()
    keywords = [keyword for keyword, _ in instructions]
    users = [index for index, keyword in enumerate(keywords) if keyword == "USER"]
    assert users, "the image must switch to a non-root USER"
    user = instructions[users[-1]][1].split(":")[0]
    assert user not in {"root", "0"}, "USER must not be root"
    last_install = max(
        index
        for index, (keyword, run) in enumerate(instructions)
        if keyword == "RUN" and _pip_installs(run)
    )
    assert users[-1] > last_install, "install as root, then switch USER"
    created = " ".join(run for keyword, run in instructions if keyword == "RUN")
    if user.isdigit():
        assert re.search(rf"--uid\s+{user}\b", created), f"uid {user} is never created"
    else:
        assert re.search(rf"useradd\b.*\b{re.escape(user)}\b", created)


def test_dockerfile_cmd_is_exec_form_celery_with_no_entrypoint_to_prefix_commands() -> None:
    instructions = _dockerfile()
    # Compose commands are whole argv (`celery …`, `tokenfleet migrate`): an ENTRYPOINT
    # would be prepended to each of them.
    assert "ENTRYPOINT" not in [keyword for keyword, _ in instructions]
    cmds = [args for keyword, args in instructions if keyword == "CMD"]
    assert cmds, "the image needs a CMD"
    argv = json.loads(cmds[-1])
    assert isinstance(argv, list) and all(isinstance(arg, str) for arg in argv), "exec form"
    assert argv[0] in {"celery", "tokenfleet"}
    if argv[0] == "celery":
        sub = _celery_subcommand(argv)
        assert sub and _option(argv[: sub[0]], "-A", "--app") == "tasks"


def test_dockerfile_bakes_no_secrets_into_env_or_build_args() -> None:
    secret_words = ("PASSWORD", "SECRET", "ENCRYPTION_KEYS", "BASIC_AUTH", "API_KEY")
    for keyword, args in _dockerfile():
        if keyword in {"ENV", "ARG"}:
            names = [word.split("=", 1)[0] for word in shlex.split(args)]
            leaked = [name for name in names if any(word in name for word in secret_words)]
            assert not leaked, f"{keyword} {leaked}: secrets come from the environment"


def test_dockerignore_keeps_local_state_secrets_and_caches_out_of_the_image() -> None:
    patterns = {
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    required = {".venv", "var", ".git", ".env", "fleet.toml"}
    required |= {".pytest_cache", ".mypy_cache", ".ruff_cache"}
    assert required <= patterns, f".dockerignore lacks {sorted(required - patterns)}"
    assert any("__pycache__" in pattern for pattern in patterns)
    kept = {"pyproject.toml", "tokenfleet", "tasks", "providers", "migrations", "celeryconfig.py"}
    assert not kept & patterns, "the build needs the project sources"


def test_makefile_has_run_test_bench_and_lint_targets() -> None:
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", MAKEFILE.read_text(), re.M))
    missing = {"run", "test", "bench", "lint"} - targets
    assert not missing, f"Makefile lacks targets {sorted(missing)}"
