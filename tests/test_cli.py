from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from enclava.cli import app
from enclava.config import Settings
from tests.conftest import cli_env

runner = CliRunner()


def test_users_create_then_duplicate_is_refused(settings: Settings) -> None:
    env = cli_env(settings)
    result = runner.invoke(
        app,
        [
            "users",
            "create",
            "--email",
            "Ops@Example.com",
            "--password",
            "long enough pw",
            "--role",
            "admin",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["email"] == "ops@example.com" and created["role"] == "admin"

    again = runner.invoke(
        app,
        ["users", "create", "--email", "ops@example.com", "--password", "long enough pw"],
        env=env,
    )
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_users_create_validates_role_and_password(settings: Settings) -> None:
    env = cli_env(settings)
    bad_role = runner.invoke(
        app,
        [
            "users",
            "create",
            "--email",
            "a@example.com",
            "--password",
            "long enough pw",
            "--role",
            "root",
        ],
        env=env,
    )
    assert bad_role.exit_code == 1 and "Unknown role" in bad_role.output
    weak = runner.invoke(
        app, ["users", "create", "--email", "a@example.com", "--password", "x"], env=env
    )
    assert weak.exit_code == 1 and "at least 8" in weak.output


def test_db_upgrade_on_empty_data_dir(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade"], env={"ENCLAVA_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "enclava.db").exists()


def test_serve_refuses_workers_on_embedded_stores(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["serve", "--workers", "2"],
        env={"ENCLAVA_DATA_DIR": str(tmp_path), "ENCLAVA_DATABASE_URL": ""},
    )
    assert result.exit_code == 1
    assert "--workers > 1 needs PostgreSQL" in result.output


def test_console_script_help() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "enclava.cli", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "ENCLAVA_DATA_DIR": "/nonexistent-unused"},
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0
    for command in ("serve", "db", "users"):
        assert command in completed.stdout
