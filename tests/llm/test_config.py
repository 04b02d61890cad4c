"""The providers file, ``${VAR}`` expansion, the privatemode shortcut and the offline default."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from enclava.config import Settings, SettingsError
from enclava.llm.config import load_llm_config


def _settings(settings: Settings, **values: object) -> Settings:
    return settings.model_copy(update={"providers_file": None, "privatemode_url": None, **values})


def test_nothing_configured_gives_labelled_simulated_models(settings: Settings) -> None:
    config = load_llm_config(_settings(settings))
    assert [p.type for p in config.providers] == ["simulated", "local"]
    chat = [m for m in config.models if m.kind == "chat"]
    assert chat and all(m.id.startswith("simulated-") for m in chat)
    assert any(m.id == "multilingual-e5-small" and m.provider == "local" for m in config.models)


def test_providers_file_with_env_expansion(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(
        "providers:\n"
        "  - name: privatemode\n    type: privatemode\n    base_url: http://127.0.0.1:8080/v1/\n"
        "    api_key: ${PM_KEY}\n    timeout_s: 30\n"
        "  - name: vllm\n    type: openai\n    base_url: ${VLLM_URL:-http://vllm:8000/v1}\n"
        "models:\n"
        "  - id: privatemode-llama-3-70b\n    provider: privatemode\n    upstream_model: latest\n"
        "    input_price_per_million: 0.50\n    output_price_per_million: 1.50\n"
        "    max_output_tokens: 4096\n    fallbacks: [local-llama]\n"
        "  - id: local-llama\n    provider: vllm\n"
        "local_embeddings: false\n"
    )
    config = load_llm_config(_settings(settings, providers_file=path), environ={"PM_KEY": "pm-123"})
    privatemode, vllm = config.providers
    assert privatemode.confidential is True and vllm.confidential is False
    assert privatemode.api_key is not None and privatemode.api_key.get_secret_value() == "pm-123"
    assert privatemode.base_url == "http://127.0.0.1:8080/v1"
    assert vllm.base_url == "http://vllm:8000/v1"
    model = config.models[0]
    assert model.input_price_per_million == Decimal("0.50") and model.upstream_model == "latest"
    assert config.models[1].upstream_model == "local-llama"
    assert not any(m.provider == "local" for m in config.models)


def test_privatemode_shortcut(settings: Settings) -> None:
    config = load_llm_config(
        _settings(settings, privatemode_url="http://127.0.0.1:8080/v1", privatemode_api_key="k")
    )
    [provider] = [p for p in config.providers if p.name == "privatemode"]
    assert provider.type == "privatemode" and provider.confidential
    assert any(m.id == "privatemode-latest" and m.upstream_model == "latest" for m in config.models)
    assert not any(p.type == "simulated" for p in config.providers)


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("providers: []\nmodels:\n  - {id: m, provider: nope}\n", "unknown provider"),
        ("providers:\n  - {name: p, type: openai}\n", "base_url is required"),
        (
            "providers:\n  - {name: p, type: privatemode, base_url: 'http://x'}\n"
            "models:\n  - {id: m, provider: p, response_cache_ttl_s: 60}\n",
            "never allowed for confidential",
        ),
        (
            "providers:\n  - {name: p, type: openai, base_url: 'http://x'}\n"
            "models:\n  - {id: m, provider: p, input_price_per_million: 0.0000000001}\n",
            "at most 9 decimals",
        ),
        (
            "providers:\n  - {name: p, type: openai, base_url: 'http://x'}\n"
            "models:\n  - {id: m, provider: p, fallbacks: [ghost]}\n",
            "unknown fallback",
        ),
        ("providers:\n  - {name: p, type: openai, base_url: '${UNSET_VAR_X}'}\n", "UNSET_VAR_X"),
        ("- just a list\n", "must be a mapping"),
    ],
)
def test_invalid_configuration_is_refused_clearly(
    settings: Settings, tmp_path: Path, yaml: str, message: str
) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(yaml)
    with pytest.raises(SettingsError, match=message):
        load_llm_config(_settings(settings, providers_file=path), environ={})


def test_missing_file_is_a_settings_error(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read providers file"):
        load_llm_config(_settings(settings, providers_file=tmp_path / "missing.yaml"))
