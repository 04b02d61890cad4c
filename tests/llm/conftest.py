"""LLM fixtures: a mock upstream on loopback (one per test session, reset per test) and a
providers file that points at it, with models scripted for faults by their upstream names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enclava.config import Settings
from enclava.testing.mock_upstream import Simulator

PROVIDERS_YAML = """
providers:
  - name: mock
    type: openai
    base_url: {url}/v1
    api_key: ${{MOCK_UPSTREAM_KEY:-upstream-secret}}
    max_retries: 2
    retry_backoff_s: 0.01
    timeout_s: 5
    circuit_failure_threshold: 3
    circuit_reset_s: 300
  - name: backup
    type: openai
    base_url: {url}/v1
    max_retries: 0
    timeout_s: 5
  - name: slow
    type: openai
    base_url: {url}/v1
    max_retries: 0
    timeout_s: 0.3
  - name: pm
    type: privatemode
    base_url: {url}/v1
    api_key: pm-secret
    max_retries: 0
models:
  - id: chat-model
    provider: mock
    upstream_model: mock-chat
    input_price_per_million: 1.0
    output_price_per_million: 2.0
    max_output_tokens: 256
  - id: flaky-model
    provider: mock
    upstream_model: mock-chat@status=500x1
    input_price_per_million: 1.0
    output_price_per_million: 2.0
    max_output_tokens: 256
  - id: broken-model
    provider: mock
    upstream_model: mock-chat@status=503
    input_price_per_million: 1.0
    output_price_per_million: 2.0
    max_output_tokens: 256
    fallbacks: [backup-model]
  - id: broken-confidential-fallback
    provider: pm
    upstream_model: mock-chat@status=503
    input_price_per_million: 1.0
    output_price_per_million: 2.0
    fallbacks: [backup-model, confidential-model]
  - id: backup-model
    provider: backup
    upstream_model: mock-backup
    input_price_per_million: 3.0
    output_price_per_million: 6.0
    max_output_tokens: 128
  - id: timeout-model
    provider: slow
    upstream_model: mock-chat@timeout
    max_output_tokens: 64
  - id: dropping-model
    provider: mock
    upstream_model: mock-chat@drop=4
    input_price_per_million: 1.0
    output_price_per_million: 2.0
    max_output_tokens: 256
  - id: confidential-model
    provider: pm
    upstream_model: latest
    input_price_per_million: 0.5
    output_price_per_million: 1.5
  - id: exact-model
    provider: mock
    upstream_model: mock-chat
    input_price_per_million: 0
    output_price_per_million: 2.0
    max_output_tokens: 50
  - id: embed-model
    provider: mock
    kind: embedding
    upstream_model: mock-embedding
    input_price_per_million: 0.02
"""


@pytest.fixture
def providers_file(tmp_path: Path, mock_upstream_server: tuple[str, Simulator]) -> Path:
    url, _ = mock_upstream_server
    path = tmp_path / "providers.yaml"
    path.write_text(PROVIDERS_YAML.format(url=url))
    return path


@pytest.fixture
def settings(settings: Settings, providers_file: Path, mock_upstream: Simulator) -> Settings:
    return settings.model_copy(update={"providers_file": providers_file})


async def key_for(actors: Any, **fields: Any) -> dict[str, Any]:
    owner = await actors.user()
    key = await actors.api_key(owner, **fields)
    key["owner"] = owner
    return key


CHAT = {"model": "chat-model", "messages": [{"role": "user", "content": "Hello there"}]}
