"""The bundled local embedding model (multilingual-e5-small, CPU, in-process)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from enclava.llm.config import ProviderConfig
from enclava.llm.local_embedder import LocalEmbedder
from enclava.llm.providers.base import Provider, unsupported
from enclava.llm.resilience import ProviderError


class LocalEmbeddingProvider(Provider):
    """Embeddings computed on this machine: nothing leaves the host, so it counts as
    confidential. E5 distinguishes queries from passages; the default is ``query`` (symmetric
    similarity), and the non-standard request field ``input_type: passage`` selects the other."""

    def __init__(self, config: ProviderConfig, embedder: LocalEmbedder) -> None:
        super().__init__(config)
        self.embedder = embedder

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        raise unsupported(self.name, "chat completions")

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        raise unsupported(self.name, "chat completions")

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"]
        if not all(isinstance(t, str) for t in texts):
            raise ProviderError(
                "the local embedding model takes text input, not token arrays",
                code="invalid_input",
                status=400,
                counts_as_failure=False,
            )
        is_query = body.get("input_type", "query") != "passage"
        try:
            vectors = (
                await self.embedder.embed_queries(texts)
                if is_query
                else await self.embedder.embed_passages(texts)
            )
            tokens = sum(await self.embedder.token_counts(texts, is_query))
        except (RuntimeError, OSError, ValueError) as exc:
            raise ProviderError(
                f"local embedding failed: {type(exc).__name__}", code="local_embedding_failed"
            ) from None
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, vector in enumerate(vectors):
            embedding: Any
            if as_base64:
                embedding = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            else:
                embedding = vector.astype(float).tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", ""),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def list_models(self) -> list[str]:
        from enclava.llm.local_embedder import MODEL_ID

        return [MODEL_ID]

    def status_details(self) -> dict[str, Any]:
        return {"runs": "in-process on CPU"}
