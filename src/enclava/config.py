"""Typed settings, read from ``ENCLAVA_*`` environment variables and ``.env``.

Secrets that are not configured are generated once into the data directory (mode 0600) and
reused after, so an embedded install needs no setup; production refuses known defaults.
"""

from __future__ import annotations

import os
import re
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that appear in docs and examples; a production deployment must never run with them.
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "changethis",
        "secret",
        "dev-secret",
        "your-secret-key",
        "your-secret-key-here",
        "enclava-secret",
    }
)


_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(?::\d{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::\d{1,5})?"
)


class SettingsError(RuntimeError):
    """Configuration that Enclava refuses to start with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ENCLAVA_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path("./data")
    database_url: str | None = None
    redis_url: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    encryption_key: SecretStr | None = None
    providers_file: Path | None = None
    privatemode_url: str | None = None
    privatemode_api_key: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    # Pool sizing for PostgreSQL; SQLite uses a single shared connection pool of its own.
    db_pool_size: int = 10
    db_max_overflow: int = 20
    db_pool_timeout_s: float = 10.0
    db_echo: bool = False

    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 14 * 24 * 3600
    cors_origins: list[str] = Field(default_factory=list)
    max_request_body_bytes: int = 10 * 1024 * 1024
    max_upload_bytes: int = 100 * 1024 * 1024
    webhooks_allow_private_networks: bool = False
    # LLM gateway: an audit row per LLM call (written with its usage row), and how long the
    # model list and provider health are cached.
    audit_llm_calls: bool = True
    models_cache_ttl_s: int = 900
    # On Redis, how long a call's budget reservation is held if its settlement never comes (the
    # instance crashed); must be longer than any call runs (docs/gateway.md).
    budget_hold_ttl_s: int = Field(default=3600, ge=60)

    # Identity and access (docs/auth.md). Limits are requests per window; a key's own
    # rate_limit_per_minute/hour columns override its tier.
    rate_limit_enabled: bool = True
    rate_limit_strategy: Literal["moving-window", "sliding-window-counter"] = "moving-window"
    rate_limit_standard_per_minute: int = Field(default=1000, ge=1)
    rate_limit_standard_per_hour: int = Field(default=20_000, ge=1)
    rate_limit_premium_per_minute: int = Field(default=5000, ge=1)
    rate_limit_premium_per_hour: int = Field(default=100_000, ge=1)
    rate_limit_user_per_minute: int = Field(default=300, ge=1)
    rate_limit_user_per_hour: int = Field(default=5000, ge=1)
    # Sign-in lockout: attempts counted per account (email) and per client IP over the window.
    login_max_failures_per_account: int = Field(default=5, ge=1)
    login_max_failures_per_ip: int = Field(default=20, ge=1)
    login_lockout_s: int = Field(default=900, ge=1)
    api_key_cache_ttl_s: float = Field(default=30.0, ge=0)
    api_key_last_used_debounce_s: int = Field(default=60, ge=1)

    # Security hardening (docs/security.md).
    # Comma-separated keys that still decrypt secrets at rest while they are re-encrypted under
    # ENCLAVA_ENCRYPTION_KEY by `enclava keys rotate-encryption`.
    encryption_key_previous: SecretStr | None = None
    threat_detection: Literal["block", "log", "off"] = "block"
    # JSON and form bodies up to this size are scanned; larger ones pass unscanned.
    threat_scan_max_body_bytes: int = 256 * 1024
    cors_allow_credentials: bool = False
    hsts_max_age_s: int = 63_072_000
    # Proxies whose X-Forwarded-For/-Proto headers `enclava serve` trusts (comma-separated).
    forwarded_allow_ips: str = "127.0.0.1"

    @model_validator(mode="after")
    def _refuse_default_secrets_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        for name in ("secret_key", "encryption_key"):
            value = getattr(self, name)
            if value is None:
                raise SettingsError(f"ENCLAVA_{name.upper()} must be set in production")
            raw = value.get_secret_value()
            if raw.strip().lower() in KNOWN_DEFAULT_SECRETS or len(raw) < 32:
                raise SettingsError(
                    f"ENCLAVA_{name.upper()} is a known default or shorter than 32 characters"
                )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_cors(self) -> Settings:
        for origin in self.cors_origins:
            if origin == "*":
                if self.cors_allow_credentials:
                    raise SettingsError(
                        "ENCLAVA_CORS_ORIGINS='*' cannot be combined with "
                        "ENCLAVA_CORS_ALLOW_CREDENTIALS=true; list the allowed origins"
                    )
                continue
            if not _ORIGIN.fullmatch(origin):
                raise SettingsError(
                    f"ENCLAVA_CORS_ORIGINS entry {origin!r} is not an origin "
                    "(scheme://host[:port], no path)"
                )
        return self

    @property
    def previous_encryption_keys(self) -> list[str]:
        if self.encryption_key_previous is None:
            return []
        raw = self.encryption_key_previous.get_secret_value()
        return [key.strip() for key in raw.split(",") if key.strip()]

    @property
    def is_embedded_db(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return _async_driver_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'enclava.db').resolve()}"

    @cached_property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @cached_property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def ensure_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    @cached_property
    def secret_key_value(self) -> str:
        return _configured_or_generated(self, self.secret_key, "secret_key")

    @cached_property
    def encryption_key_value(self) -> str:
        return _configured_or_generated(self, self.encryption_key, "encryption_key")


def _async_driver_url(url: str) -> str:
    """Accept the URLs people paste (``postgresql://``, ``postgres://``) and pick async drivers."""
    for prefix in (
        "postgres://",
        "postgresql://",
        "postgresql+psycopg2://",
        "postgresql+psycopg://",
    ):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


def _configured_or_generated(settings: Settings, value: SecretStr | None, name: str) -> str:
    if value is not None and value.get_secret_value():
        return value.get_secret_value()
    settings.ensure_data_dir()
    path = settings.data_dir / f".{name}"
    if path.exists():
        stored = path.read_text().strip()
        if stored:
            return stored
    generated = secrets.token_urlsafe(48)
    # Write a private temp file, then hard-link it into place: the link fails if another process
    # got there first, so two processes starting together agree on one key.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(generated)
    try:
        os.link(tmp, path)
    except FileExistsError:
        generated = path.read_text().strip()
    finally:
        tmp.unlink()
    return generated


def get_settings() -> Settings:
    return Settings()
