"""Chatbot fixtures: the app talks to the mock upstream through the real metered gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclava.app import create_app as create_enclava
from enclava.config import Settings
from enclava.testing.mock_upstream import Simulator
from enclava.testing.server import serve_in_thread

PROVIDERS_YAML = """
providers:
  - name: mock
    type: openai
    base_url: {url}/v1
    max_retries: 0
    timeout_s: 10
  - name: pm
    type: privatemode
    base_url: {url}/v1
    api_key: pm-secret
    max_retries: 0
    timeout_s: 10
models:
  - id: chat-model
    provider: mock
    upstream_model: mock-chat
    input_price_per_million: 1.0
    output_price_per_million: 2.0
    max_output_tokens: 512
    context_window: 8192
  - id: small-model
    provider: mock
    upstream_model: mock-chat
    input_price_per_million: 1.0
    output_price_per_million: 2.0
    max_output_tokens: 300
    context_window: 1200
  - id: dropping-model
    provider: mock
    upstream_model: mock-chat@drop=3@tokens=40
    max_output_tokens: 512
  - id: slow-model
    provider: mock
    upstream_model: mock-chat@chunk_latency=30@tokens=200
    max_output_tokens: 512
  - id: private-model
    provider: pm
    upstream_model: latest
    input_price_per_million: 0.5
    output_price_per_million: 1.5
    max_output_tokens: 512
"""


@pytest.fixture
def upstream(mock_upstream: Simulator) -> Simulator:
    return mock_upstream


@pytest.fixture
def settings(
    settings: Settings,
    tmp_path: Path,
    mock_upstream_server: tuple[str, Simulator],
    upstream: Simulator,
) -> Settings:
    url, _ = mock_upstream_server
    path = tmp_path / "providers.yaml"
    path.write_text(PROVIDERS_YAML.format(url=url))
    return settings.model_copy(update={"providers_file": path})


@pytest.fixture
def served(settings: Settings, app: Any, tmp_path: Path) -> Iterator[str]:
    """A second app instance on the same database, served by uvicorn on loopback (for the
    official openai SDK). Qdrant's local mode is held by one instance at a time, so this one gets
    a data dir (and vector store) of its own; it only needs the database."""
    values = settings.model_dump()
    values["data_dir"] = tmp_path / "second-instance"
    values["database_url"] = settings.resolved_database_url
    with serve_in_thread(create_enclava(Settings(_env_file=None, **values))) as url:  # type: ignore[call-arg]
        yield url
