"""Re-encrypt every encrypted column under the current key (``enclava keys rotate-encryption``).

Columns are found by type in the metadata, so a table added later with an ``EncryptedString``
or ``EncryptedJSON`` column is rotated without being registered anywhere. Values are read and
written as raw tokens (never decrypted into Python objects beyond the rotation itself), in
batches that each commit: a rotation interrupted half-way leaves every row readable as long as
the previous key is still configured, and running it again finishes the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, MetaData, Table, Text, bindparam, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncEngine

from enclava.kit.crypto import SecretBox
from enclava.models.encrypted import encrypted_columns

BATCH_SIZE = 500


class RotationError(RuntimeError):
    """A stored value could not be decrypted with any configured key."""


@dataclass
class RotationReport:
    # "table.column" -> rows re-encrypted / rows already under the current key
    rotated: dict[str, int] = field(default_factory=dict)
    already_current: dict[str, int] = field(default_factory=dict)

    @property
    def total_rotated(self) -> int:
        return sum(self.rotated.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "rotated": self.rotated,
            "already_current": self.already_current,
            "total_rotated": self.total_rotated,
        }


async def rotate_encryption(
    engine: AsyncEngine, box: SecretBox, metadata: MetaData, *, dry_run: bool = False
) -> RotationReport:
    """Re-encrypt under ``box``'s current key every value not already under it."""
    report = RotationReport()
    for table, column in encrypted_columns(metadata):
        name = f"{table.name}.{column.name}"
        rotated, current = await _rotate_column(engine, box, table, column, dry_run=dry_run)
        report.rotated[name] = rotated
        report.already_current[name] = current
    return report


async def _rotate_column(
    engine: AsyncEngine,
    box: SecretBox,
    table: Table,
    column: Column[Any],
    *,
    dry_run: bool,
) -> tuple[int, int]:
    primary_key = list(table.primary_key.columns)
    if not primary_key:
        raise RotationError(f"{table.name} has no primary key; cannot rotate {column.name}")
    raw = type_coerce(column, Text)  # the stored token, bypassing decryption
    statement = (
        select(*primary_key, raw.label("token"))
        .where(column.is_not(None))
        .order_by(*primary_key)
        .limit(BATCH_SIZE)
    )
    # Bind parameters are named after the key columns with a prefix so they cannot clash with
    # the column names SQLAlchemy reserves in UPDATE ... SET.
    write = (
        update(table)
        .where(*(col == bindparam(f"pk_{col.name}") for col in primary_key))
        .values({column.name: type_coerce(bindparam("new_token"), Text)})
    )
    rotated = current = 0
    offset = 0
    while True:
        async with engine.begin() as connection:
            rows = (await connection.execute(statement.offset(offset))).all()
            if not rows:
                break
            updates = []
            for row in rows:
                token = row.token
                if box.is_current(token):
                    current += 1
                    continue
                try:
                    new_token = box.rotate(token)
                except ValueError:
                    raise RotationError(
                        f"a value in {table.name}.{column.name} cannot be decrypted with "
                        "ENCLAVA_ENCRYPTION_KEY or ENCLAVA_ENCRYPTION_KEY_PREVIOUS"
                    ) from None
                updates.append(
                    {
                        **{f"pk_{col.name}": row._mapping[col] for col in primary_key},
                        "new_token": new_token,
                    }
                )
            if updates and not dry_run:
                await connection.execute(write, updates)
            rotated += len(updates)
        offset += len(rows)
    return rotated, current
