from __future__ import annotations

import stat
from pathlib import Path

import pytest

from enclava.config import Settings, SettingsError


def make(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


def test_defaults_are_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "QDRANT_URL", "SECRET_KEY", "ENVIRONMENT"):
        monkeypatch.delenv(f"ENCLAVA_{name}", raising=False)
    settings = make(tmp_path)
    assert settings.environment == "development"
    assert (
        settings.resolved_database_url
        == f"sqlite+aiosqlite:///{(tmp_path / 'enclava.db').resolve()}"
    )
    assert settings.is_embedded_db
    assert settings.redis_url is None and settings.qdrant_url is None
    assert settings.qdrant_path == tmp_path / "qdrant"


def test_environment_variables_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVA_DATABASE_URL", "postgresql://u@db.internal:5432/enclava")
    monkeypatch.setenv("ENCLAVA_REDIS_URL", "redis://cache:6379/0")
    settings = make(tmp_path)
    assert settings.resolved_database_url == "postgresql+asyncpg://u@db.internal:5432/enclava"
    assert not settings.is_embedded_db
    assert settings.redis_url == "redis://cache:6379/0"


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCLAVA_PORT", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("ENCLAVA_PORT=9123\n")
    settings = Settings(_env_file=env_file, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.port == 9123


def test_secrets_are_generated_once_with_private_mode(tmp_path: Path) -> None:
    first = make(tmp_path)
    secret = first.secret_key_value
    encryption = first.encryption_key_value
    assert len(secret) >= 48 and len(encryption) >= 48 and secret != encryption
    for name in (".secret_key", ".encryption_key"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, oct(mode)
    second = make(tmp_path)
    assert second.secret_key_value == secret
    assert second.encryption_key_value == encryption
    assert not [p for p in tmp_path.iterdir() if ".secret_key." in p.name], "temp files left over"


def test_configured_secret_wins_over_generated(tmp_path: Path) -> None:
    settings = make(tmp_path, secret_key="x" * 40)
    assert settings.secret_key_value == "x" * 40
    assert not (tmp_path / ".secret_key").exists()


@pytest.mark.parametrize("value", ["changeme", "secret", "short-but-unique", ""])
def test_production_refuses_default_or_weak_secrets(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError):
        make(tmp_path, environment="production", secret_key=value, encryption_key="e" * 40)


def test_production_requires_secrets_to_be_set(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="ENCLAVA_SECRET_KEY"):
        make(tmp_path, environment="production", encryption_key="e" * 40)


def test_production_accepts_strong_secrets(tmp_path: Path) -> None:
    settings = make(
        tmp_path, environment="production", secret_key="s" * 40, encryption_key="e" * 40
    )
    assert settings.secret_key_value == "s" * 40
