from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from enclava.rag.chunking import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

Access = Literal["owner", "write", "read", "none"]
SearchMode = Literal["hybrid", "dense", "sparse"]
Scalar = str | int | bool
# Payload fields a search may filter on; ``metadata.<key>`` reaches a document's own metadata.
FILTER_FIELDS = frozenset({"document_id", "filename", "page", "heading", "format"})
METADATA_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_METADATA_KEYS = 32


class CollectionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    embedding_model: str | None = Field(default=None, max_length=200)
    chunk_size: int = Field(default=800, ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)
    chunk_overlap: int = Field(default=100, ge=0)

    @field_validator("name")
    @classmethod
    def _strip_name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        if any(ord(ch) < 32 for ch in value):
            raise ValueError("must not contain control characters")
        return value

    @model_validator(mode="after")
    def _overlap_fits(self) -> CollectionCreate:
        if self.chunk_overlap > self.chunk_size // 2:
            raise ValueError("chunk_overlap must be at most half of chunk_size")
        return self


class CollectionRead(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    embedding_model: str
    chunk_size: int
    chunk_overlap: int
    owner_id: uuid.UUID
    owner_email: str
    access: Access
    document_count: int
    created_at: datetime
    updated_at: datetime


class ShareCreate(BaseModel):
    user_id: uuid.UUID | None = None
    email: str | None = Field(default=None, max_length=320)
    permission: Literal["read", "write"] = "read"

    @model_validator(mode="after")
    def _one_target(self) -> ShareCreate:
        if (self.user_id is None) == (self.email is None):
            raise ValueError("give either user_id or email")
        return self


class ShareRead(BaseModel):
    user_id: uuid.UUID
    email: str
    permission: Literal["read", "write"]


class DocumentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    collection_id: uuid.UUID
    filename: str
    format: str | None
    content_type: str | None
    size_bytes: int
    sha256: str
    status: Literal["queued", "processing", "processed", "failed"]
    error: str | None
    progress: float
    chunk_count: int | None
    page_count: int | None
    metadata: dict[str, Any]
    timings: dict[str, float] | None = None
    duplicate: bool = False
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4000)
    top_k: int = Field(default=5, ge=1, le=50)
    mode: SearchMode = "hybrid"
    filter: dict[str, Scalar | list[Scalar]] | None = Field(
        default=None,
        description="Equality on document_id, filename, page, heading, format or "
        "metadata.<key>; a list matches any of its values.",
    )
    score_threshold: float | None = None

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("filter")
    @classmethod
    def _known_fields(
        cls, value: dict[str, Scalar | list[Scalar]] | None
    ) -> dict[str, Scalar | list[Scalar]] | None:
        if not value:
            return None
        if len(value) > 16:
            raise ValueError("at most 16 filter conditions")
        for key, condition in value.items():
            if key.startswith("metadata."):
                if not METADATA_KEY.match(key.removeprefix("metadata.")):
                    raise ValueError(f"invalid metadata key in {key!r}")
            elif key not in FILTER_FIELDS:
                allowed = ", ".join(sorted(FILTER_FIELDS))
                raise ValueError(f"unknown filter field {key!r}; use {allowed} or metadata.<key>")
            if isinstance(condition, list) and not 1 <= len(condition) <= 100:
                raise ValueError(f"filter {key!r} needs 1 to 100 values")
        return value


class SearchHit(BaseModel):
    text: str
    score: float
    document_id: uuid.UUID
    filename: str
    page: int | None
    heading: str | None
    chunk_index: int
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    mode: SearchMode
    results: list[SearchHit]
