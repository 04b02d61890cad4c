"""Columns whose values are encrypted at rest (provider keys, plugin configs, webhook secrets).

Declare a column as ``mapped_column(EncryptedString())`` or ``mapped_column(EncryptedJSON())``
and read and write plaintext as usual: values are encrypted on the way into the database and
decrypted on the way out, so no plaintext secret ever reaches a table, a backup or a replica.

The key lives on the engine, not in a global: ``enclava.db.create_engine`` attaches the
``SecretBox`` built from the settings to the engine's dialect, which SQLAlchemy hands to every
bind and result processor. An engine without a box refuses to read or write these columns
rather than silently storing plaintext.

``enclava keys rotate-encryption`` finds every such column through ``encrypted_columns`` (by
type, so tables added later are included without being listed anywhere).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from sqlalchemy import Column, MetaData, Table, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from enclava.kit.crypto import SecretBox

_BOX_ATTRIBUTE = "enclava_secret_box"


class MissingEncryptionKeyError(RuntimeError):
    """An encrypted column was used on an engine that has no ``SecretBox`` attached."""


def install_secret_box(engine: AsyncEngine, box: SecretBox | Callable[[], SecretBox]) -> None:
    """Let ``engine`` read and write encrypted columns with ``box``.

    A callable is called on first use only, so engines that never touch an encrypted column
    (migrations, scripts) do not need the key to exist.
    """
    factory = box if callable(box) and not isinstance(box, SecretBox) else (lambda: box)
    setattr(engine.sync_engine.dialect, _BOX_ATTRIBUTE, functools.cache(factory))


def secret_box_of(dialect: Dialect) -> SecretBox:
    factory = getattr(dialect, _BOX_ATTRIBUTE, None)
    box = factory() if factory is not None else None
    if not isinstance(box, SecretBox):
        raise MissingEncryptionKeyError(
            "encrypted column used on an engine without an encryption key; "
            "create engines with enclava.db.create_engine"
        )
    return box


class EncryptedString(TypeDecorator[str]):
    """A text secret, stored as a Fernet token."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise TypeError("EncryptedString columns take str values")
        return secret_box_of(dialect).encrypt(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return secret_box_of(dialect).decrypt(value)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON document (e.g. a plugin configuration holding credentials), encrypted as a whole."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return secret_box_of(dialect).encrypt(orjson.dumps(value).decode())

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return orjson.loads(secret_box_of(dialect).decrypt(value))


ENCRYPTED_TYPES = (EncryptedString, EncryptedJSON)


def encrypted_columns(metadata: MetaData) -> Iterator[tuple[Table, Column[Any]]]:
    """Every column of every table in ``metadata`` whose type encrypts at rest."""
    for table in metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, ENCRYPTED_TYPES):
                yield table, column
