"""Chatbot fixtures: the app talks to the mock upstream through the real metered gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enclava.config import Settings
from enclava.testing.mock_upstream import Simulator, SimulatorConfig, create_app
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


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[tuple[str, Simulator]]:
    simulator = Simulator(SimulatorConfig())
    with serve_in_thread(create_app(simulator)) as url:
        yield url, simulator


@pytest.fixture
def upstream(upstream_server: tuple[str, Simulator]) -> Simulator:
    _, simulator = upstream_server
    simulator.reset()
    simulator.config = SimulatorConfig()
    return simulator


@pytest.fixture
def settings(
    settings: Settings, tmp_path: Path, upstream_server: tuple[str, Simulator], upstream: Simulator
) -> Settings:
    url, _ = upstream_server
    path = tmp_path / "providers.yaml"
    path.write_text(PROVIDERS_YAML.format(url=url))
    return settings.model_copy(update={"providers_file": path})
