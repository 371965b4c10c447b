"""The ``tokenfleet`` command through its real console entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL
from tests.processes import fleet_env
from tokenfleet.crypto import generate_key
from tokenfleet.sandbox.webkassa import WebkassaSandbox

TOKENFLEET = shutil.which("tokenfleet", path=str(Path(os.sys.executable).parent))  # type: ignore[attr-defined]

FLEET = """
[[credential]]
provider = "webkassa"
tenant = "{tenant}"
[credential.config]
base_url = "{url}"
login = "sandbox"
password = "${{WK_PASSWORD}}"
"""


@pytest.fixture
def sandbox() -> Iterator[WebkassaSandbox]:
    with WebkassaSandbox(password="cli-pw-41x") as box:
        yield box


@pytest.fixture
def cli(tmp_path: Path, key_prefix: str, sandbox: WebkassaSandbox):  # type: ignore[no-untyped-def]
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(tenant="shop", url=sandbox.url))
    env = fleet_env(
        redis_url=REDIS_URL,
        database_url=f"sqlite:///{tmp_path}/cli.db",
        key=generate_key(),
        key_prefix=key_prefix,
        state_dir=tmp_path / "var",
        fleet_file=fleet,
        extra={"WK_PASSWORD": "cli-pw-41x"},
    )

    def run(*args: str, code: int = 0, **extra: str) -> subprocess.CompletedProcess[str]:
        assert TOKENFLEET, "the tokenfleet console script is not installed"
        done = subprocess.run(
            [TOKENFLEET, *args], cwd=tmp_path, env={**env, **extra},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == code, (done.stdout, done.stderr)
        for secret in ("cli-pw-41x", *sandbox.issued):
            assert secret not in done.stdout + done.stderr
        return done

    run.env = env  # type: ignore[attr-defined]
    run.fleet = fleet  # type: ignore[attr-defined]
    return run


def test_migrate_loads_the_fleet_file_and_rotate_status_log_show_the_result(cli) -> None:  # type: ignore[no-untyped-def]
    assert "1 created" in cli("migrate").stdout
    rotated = json.loads(cli("rotate", "webkassa", "-t", "shop", "--local", "--json").stdout)
    assert rotated["status"] == "rotated" and rotated["version"] == 1
    (row,) = json.loads(cli("status", "--json").stdout)
    assert (row["provider"], row["tenant"], row["version"]) == ("webkassa", "shop", 1)
    assert row["last_outcome"] == "rotated"
    log = json.loads(cli("log", "--json").stdout)
    assert [(r["outcome"], r["trigger"]) for r in log] == [("rotated", "manual")]
    assert "webkassa" in cli("status").stdout


def test_an_invalid_fleet_file_is_one_clear_line_and_loads_nothing(cli) -> None:  # type: ignore[no-untyped-def]
    cli.fleet.write_text(FLEET.format(tenant="shop", url="ftp://nowhere"))
    done = cli("migrate", code=2)
    assert done.stderr.startswith("error: InvalidConfig:")
    assert "config.base_url" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(cli("status", "--json").stdout) == []


def test_failures_exit_non_zero_with_the_error_class(cli) -> None:  # type: ignore[no-untyped-def]
    cli("migrate")
    done = cli("rotate", "nope", "--local", code=1)
    assert "UnknownProvider" in done.stdout
    assert "--since" in cli("log", "--since", "soon", code=2).stderr


def test_disable_enable_and_list_credentials(cli) -> None:  # type: ignore[no-untyped-def]
    cli("migrate")
    cli("credentials", "disable", "webkassa", "-t", "shop")
    (row,) = json.loads(cli("credentials", "list", "--json").stdout)
    assert row["enabled"] is False and "cron 0 5 * * *" in row["schedule"]
    cli("credentials", "enable", "webkassa", "-t", "shop")
    assert json.loads(cli("credentials", "list", "--json").stdout)[0]["enabled"] is True
    assert (
        "UnknownCredential" in cli("credentials", "disable", "webkassa", "-t", "x", code=2).stderr
    )


def test_keys_rotate_re_encrypts_so_the_old_key_can_be_dropped(cli) -> None:  # type: ignore[no-untyped-def]
    cli("migrate")
    cli("rotate", "webkassa", "-t", "shop", "--local")
    old = cli.env["TOKENFLEET_ENCRYPTION_KEYS"]
    new = generate_key()
    assert "re-encrypted" in cli("keys", "rotate", TOKENFLEET_ENCRYPTION_KEYS=f"{new},{old}").stdout
    checked = cli("check", "webkassa", "-t", "shop", "--local", "--json",
                  TOKENFLEET_ENCRYPTION_KEYS=new)  # fmt: skip
    assert json.loads(checked.stdout)["status"] == "valid"
    failed = cli("check", "webkassa", "-t", "shop", "--local", code=1,
                 TOKENFLEET_ENCRYPTION_KEYS=generate_key())  # fmt: skip
    assert "InvalidConfig: stored secret cannot be decrypted" in failed.stdout


def test_rotate_without_a_worker_times_out_with_a_clear_message(cli) -> None:  # type: ignore[no-untyped-def]
    cli("migrate")
    done = cli("rotate", "webkassa", "-t", "shop", "--timeout", "1", code=2,
               TOKENFLEET_KEY_PREFIX="nobody-listens")  # fmt: skip
    assert done.stderr.startswith("error: FleetTimeout: no result within 1s")
    assert "is a worker running?" in done.stderr


def test_credentials_add_validates_and_reveal_is_the_only_way_to_see_a_secret(
    cli, sandbox: WebkassaSandbox
) -> None:  # type: ignore[no-untyped-def]
    cli("migrate")
    bad = cli(
        "credentials", "add", "webkassa", "-t", "cli", "--set", f"base_url={sandbox.url}", code=2
    )
    assert "config.login" in bad.stderr
    added = cli(
        "credentials", "add", "webkassa", "-t", "cli", "--set", f"base_url={sandbox.url}",
        "--set", "login=sandbox", "--set", "password=${WK_PASSWORD}", "--schedule", "every 3h",
    )  # fmt: skip
    assert "webkassa/cli: created" in added.stdout
    plain = json.loads(cli("rotate", "webkassa", "-t", "cli", "--local", "--json").stdout)
    assert "value" not in plain
    import subprocess

    revealed = subprocess.run(
        [TOKENFLEET, "rotate", "webkassa", "-t", "cli", "--local", "--reveal", "--json"],  # type: ignore[list-item]
        env=cli.env, capture_output=True, text=True, timeout=60, cwd=cli.fleet.parent,
    )  # fmt: skip
    assert json.loads(revealed.stdout)["value"] == sandbox.issued[-1]
    rows = {r["tenant"]: r for r in json.loads(cli("credentials", "list", "--json").stdout)}
    assert rows["cli"]["schedule"] == "every 3h"


def test_credentials_remove_deletes_versions_but_keeps_the_audit(cli) -> None:  # type: ignore[no-untyped-def]
    cli("migrate")
    cli("rotate", "webkassa", "-t", "shop", "--local")
    assert "removed" in cli("credentials", "remove", "webkassa", "-t", "shop", "--yes").stdout
    assert json.loads(cli("status", "--json").stdout) == []
    assert len(json.loads(cli("log", "--json").stdout)) == 1
    assert (
        "UnknownCredential"
        in cli("credentials", "remove", "webkassa", "-t", "shop", "--yes", code=2).stderr
    )


BROWSER_FLEET = """
[[credential]]
provider = "chitai_gorod"
tenant = "{tenant}"
[credential.config]
flaresolverr_url = "{url}"
"""


def test_status_probes_flaresolverr_once_and_shows_it_down_when_it_stops(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, sandbox: WebkassaSandbox
) -> None:
    from tokenfleet.sandbox.flaresolverr import FlareSolverrSandbox

    with FlareSolverrSandbox() as solver:
        fleet = FLEET.format(tenant="shop", url=sandbox.url) + "".join(
            BROWSER_FLEET.format(tenant=t, url=solver.url) for t in ("a", "b")
        )
        (tmp_path / "fleet.toml").write_text(fleet)
        cli("migrate")
        rows = {r["tenant"]: r for r in json.loads(cli("status", "--json").stdout)}
        (dep,) = rows["a"]["dependencies"]
        assert dep["component"] == "flaresolverr" and dep["target"] == solver.url
        assert dep["ok"] is True and rows["b"]["dependencies"] == [dep]
        assert rows["shop"]["dependencies"] == []  # webkassa has nothing to probe
        assert solver.calls.get("health") == 1
        table = cli("status").stdout
        assert "dependencies" in table and "up" in table and "chitai_gorod/a" in table
        solver.stop()
        (dep,) = json.loads(cli("status", "--json").stdout)[0]["dependencies"]
        assert dep["ok"] is False and "down" in dep["detail"]
        assert "DOWN" in cli("status").stdout
        assert "dependencies" not in cli("status", "--no-probe").stdout
