"""Providers and models: the providers YAML file, the privatemode shortcut and the defaults.

Sources, merged in this order: ``ENCLAVA_PROVIDERS_FILE`` (``${VAR}`` expands from the
environment), then ``ENCLAVA_PRIVATEMODE_URL`` / ``ENCLAVA_PRIVATEMODE_API_KEY`` (one privatemode
provider and a ``privatemode-latest`` model, unless the file already names a provider
``privatemode``). With neither, a local simulated provider serves ``simulated-*`` models so that
a fresh install works offline. The bundled local embedding model is always added unless the file
sets ``local_embeddings: false``.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from enclava.config import Settings, SettingsError
from enclava.llm.local_embedder import MODEL_ID as LOCAL_EMBEDDING_MODEL

ProviderType = Literal["privatemode", "openai", "local", "simulated"]
SIMULATED_PROVIDER = "simulated"
LOCAL_PROVIDER = "local"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MAX_PRICE_DECIMALS = 9  # nano-dollars per million tokens must be whole


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    type: ProviderType
    base_url: str | None = None
    api_key: SecretStr | None = None
    confidential: bool | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_backoff_s: float = Field(default=0.2, ge=0)
    max_connections: int = Field(default=200, ge=1)
    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_reset_s: float = Field(default=30.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    manifest_dir: Path | None = None
    expected_manifest_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    # Simulated providers only: defaults of the in-process simulator (latency_ms, ...).
    simulator: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ProviderConfig:
        if self.type in ("privatemode", "openai") and not self.base_url:
            raise ValueError(f"provider {self.name!r}: base_url is required for {self.type}")
        if self.confidential is None:
            self.confidential = self.type == "privatemode"
        if self.type != "privatemode" and (self.manifest_dir or self.expected_manifest_sha256):
            raise ValueError(f"provider {self.name!r}: manifest settings are for privatemode")
        if self.base_url:
            self.base_url = self.base_url.rstrip("/")
        return self

    @property
    def is_confidential(self) -> bool:
        return bool(self.confidential)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    provider: str
    upstream_model: str | None = None
    kind: Literal["chat", "embedding"] = "chat"
    input_price_per_million: Decimal = Field(default=Decimal(0), ge=0)
    output_price_per_million: Decimal = Field(default=Decimal(0), ge=0)
    max_output_tokens: int = Field(default=4096, ge=1)
    # When known, bounds the prompt of the worst-case reservation more tightly.
    context_window: int | None = Field(default=None, ge=1)
    fallbacks: list[str] = Field(default_factory=list)
    # Which request field carries the output limit upstream (OpenAI's newer models want
    # max_completion_tokens; vLLM, Ollama and privatemode accept max_tokens).
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Seconds to cache identical non-streamed answers per user; 0 = off. Refused for
    # confidential providers.
    response_cache_ttl_s: int = Field(default=0, ge=0)
    description: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        for price in (self.input_price_per_million, self.output_price_per_million):
            exponent = price.as_tuple().exponent
            if isinstance(exponent, int) and -exponent > _MAX_PRICE_DECIMALS:
                raise ValueError(f"model {self.id!r}: prices have at most 9 decimals")
        if self.upstream_model is None:
            self.upstream_model = self.id
        return self


class LLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: list[ProviderConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    local_embeddings: bool = True

    @model_validator(mode="after")
    def _check(self) -> LLMConfig:
        providers = {p.name: p for p in self.providers}
        if len(providers) != len(self.providers):
            raise ValueError("provider names must be unique")
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("model ids must be unique")
        by_id = {m.id: m for m in self.models}
        for model in self.models:
            provider = providers.get(model.provider)
            if provider is None:
                raise ValueError(f"model {model.id!r}: unknown provider {model.provider!r}")
            if model.response_cache_ttl_s and provider.is_confidential:
                raise ValueError(
                    f"model {model.id!r}: response caching is never allowed for "
                    "confidential providers"
                )
            for fallback in model.fallbacks:
                target = by_id.get(fallback)
                if target is None or fallback == model.id:
                    raise ValueError(f"model {model.id!r}: unknown fallback {fallback!r}")
                if target.kind != model.kind:
                    raise ValueError(
                        f"model {model.id!r}: fallback {fallback!r} is a different kind"
                    )
        return self


def expand_env(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error."""
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None:
            if default is None:
                raise SettingsError(f"providers file uses ${{{name}}}, which is not set")
            return default
        return value

    return _VAR.sub(substitute, text)


def simulated_defaults() -> tuple[list[ProviderConfig], list[ModelConfig]]:
    provider = ProviderConfig(name=SIMULATED_PROVIDER, type="simulated", confidential=False)
    models = [
        ModelConfig(
            id="simulated-chat",
            provider=SIMULATED_PROVIDER,
            description="Simulated model (no real LLM): deterministic placeholder answers",
            input_price_per_million=Decimal("0.50"),
            output_price_per_million=Decimal("1.50"),
            max_output_tokens=1024,
        ),
        ModelConfig(
            id="simulated-chat-mini",
            provider=SIMULATED_PROVIDER,
            description="Simulated model (no real LLM): deterministic placeholder answers",
            input_price_per_million=Decimal("0.10"),
            output_price_per_million=Decimal("0.30"),
            max_output_tokens=1024,
        ),
    ]
    return [provider], models


def load_llm_config(settings: Settings, environ: dict[str, str] | None = None) -> LLMConfig:
    """Read and validate the providers configuration; raises ``SettingsError`` when invalid."""
    raw: dict[str, Any] = {}
    if settings.providers_file is not None:
        path = Path(settings.providers_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"cannot read providers file {path}: {exc.strerror}") from exc
        loaded = yaml.safe_load(expand_env(text, environ)) or {}
        if not isinstance(loaded, dict):
            raise SettingsError(f"providers file {path} must be a mapping")
        raw = loaded
    try:
        config = LLMConfig.model_validate(raw)
        providers, models = list(config.providers), list(config.models)
        if settings.privatemode_url and not any(p.name == "privatemode" for p in providers):
            providers.append(
                ProviderConfig(
                    name="privatemode",
                    type="privatemode",
                    base_url=settings.privatemode_url,
                    api_key=settings.privatemode_api_key,
                )
            )
            if not any(m.id == "privatemode-latest" for m in models):
                models.append(
                    ModelConfig(
                        id="privatemode-latest", provider="privatemode", upstream_model="latest"
                    )
                )
        if not providers:
            providers, models = simulated_defaults()
        if config.local_embeddings and not any(m.id == LOCAL_EMBEDDING_MODEL for m in models):
            models.append(
                ModelConfig(id=LOCAL_EMBEDDING_MODEL, provider=LOCAL_PROVIDER, kind="embedding")
            )
        if any(m.provider == LOCAL_PROVIDER for m in models) and not any(
            p.name == LOCAL_PROVIDER for p in providers
        ):
            providers.append(ProviderConfig(name=LOCAL_PROVIDER, type="local", confidential=True))
        return LLMConfig(
            providers=providers, models=models, local_embeddings=config.local_embeddings
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise SettingsError(f"invalid providers configuration at {where}: {first['msg']}") from exc
