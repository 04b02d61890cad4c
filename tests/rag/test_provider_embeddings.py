"""Collections that embed with a provider's model go through the metered gateway: the uploader
pays for ingestion, the searcher for the query, and a budget can stop both."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclava.config import Settings
from enclava.db import transaction
from enclava.kit.time import utcnow
from enclava.models import Budget
from enclava.testing.mock_upstream import Simulator
from tests.llm.helpers import usage_rows
from tests.rag.conftest import RagApi, running_app

PROVIDERS = """
providers:
  - name: upstream
    type: openai
    base_url: {url}/v1
    max_retries: 0
    timeout_s: 5
models:
  - id: provider-embedding
    provider: upstream
    kind: embedding
    upstream_model: mock-embedding
    input_price_per_million: 1.0
"""


@pytest.fixture
def provider_settings(
    settings: Settings,
    tmp_path: Path,
    mock_upstream_server: tuple[str, Simulator],
    mock_upstream: Simulator,
) -> Settings:
    url, _ = mock_upstream_server
    path = tmp_path / "providers.yaml"
    path.write_text(PROVIDERS.format(url=url))
    return settings.model_copy(update={"providers_file": path})


async def test_provider_embedding_collection_is_metered(provider_settings: Settings) -> None:
    async with running_app(provider_settings) as (app, client, actors):
        user = await actors.user()
        api = RagApi(client, user["headers"])
        collection = await api.create_collection("provider", embedding_model="provider-embedding")
        assert collection["embedding_model"] == "provider-embedding"
        document = await api.ingest(
            collection["id"], "pumps.txt", b"The pump P-100 needs new seals every 2000 hours."
        )
        assert document["status"] == "processed", document
        ingest_rows = await usage_rows(app)
        assert [(r.model, r.endpoint, r.status) for r in ingest_rows] == [
            ("provider-embedding", "rag.embeddings", "success")
        ]
        assert ingest_rows[0].user_id == user["id"] and ingest_rows[0].cost_nanousd > 0

        hits = await api.search_raw(collection["id"], "seals for pump P-100", mode="dense")
        assert hits.status_code == 200, hits.text
        results = hits.json()["results"]
        assert results and results[0]["document_id"] == document["id"]
        assert len(await usage_rows(app)) == 2  # the query was metered too


async def test_exhausted_budget_fails_ingestion_with_a_reason(provider_settings: Settings) -> None:
    async with running_app(provider_settings) as (app, client, actors):
        user = await actors.user()
        async with transaction(app.state.enclava.session_factory) as session:
            session.add(
                Budget(
                    user_id=user["id"],
                    name="empty",
                    period="total",
                    limit_nanousd=0,
                    period_started_at=utcnow(),
                )
            )
        api = RagApi(client, user["headers"])
        collection = await api.create_collection("capped", embedding_model="provider-embedding")
        document = await api.ingest(collection["id"], "a.txt", b"Some text worth embedding.")
        assert document["status"] == "failed"
        assert "provider-embedding" in document["error"] and "Budget" in document["error"]
        search = await api.search_raw(collection["id"], "text", mode="dense")
        assert search.status_code == 429
        assert search.json()["code"] == "insufficient_quota"


async def test_unknown_embedding_model_is_refused(provider_settings: Settings) -> None:
    async with running_app(provider_settings) as (_app, client, actors):
        api = RagApi(client, (await actors.user())["headers"])
        response = await client.post(
            f"{api.base}/collections",
            json={"name": "x", "embedding_model": "no-such-model"},
            headers=api.headers,
        )
        assert response.status_code == 400
        assert "provider-embedding" in response.json()["detail"]
