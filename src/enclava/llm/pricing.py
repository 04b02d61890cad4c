"""Prices, costs and the worst-case bound that budgets reserve.

Prices are configured in USD per million tokens and held as integer nano-dollars per million
tokens (exact for up to nine decimals). The cost of a call is
``ceil((prompt * input + completion * output) / 1_000_000)`` nano-dollars: monotonic in the token
counts, so the cost of the real usage never exceeds the cost of an upper bound of it.

The upstream tokenizer is unknown, so the prompt is bounded without one: every byte-level BPE or
SentencePiece (byte fallback) token covers at least one UTF-8 byte of text, so the byte length of
the serialised request (messages, tools, schemas: everything the chat template can render) plus
a per-message allowance for template tokens, plus a per-image allowance, is an upper bound. The
model's context window, when configured, caps it further.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from enclava.budgets.service import NANOUSD_PER_USD

PER_MESSAGE_TEMPLATE_TOKENS = 16
PER_REQUEST_TEMPLATE_TOKENS = 64
PER_IMAGE_TOKENS = 8192
PER_AUDIO_TOKENS = 8192
_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """Nano-dollars per million input and output tokens."""

    input_per_million: int
    output_per_million: int

    @classmethod
    def from_usd(cls, input_usd: Decimal, output_usd: Decimal) -> Price:
        return cls(int(input_usd * NANOUSD_PER_USD), int(output_usd * NANOUSD_PER_USD))

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Nano-dollars, rounded up."""
        total = prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        return -(-total // _MILLION)


def usd(nanousd: int) -> str:
    """A decimal string in USD, exact (nine decimals, trailing zeros trimmed)."""
    text = format(Decimal(nanousd) / NANOUSD_PER_USD, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def to_nanousd(amount: Decimal | float | int | str) -> int:
    value = Decimal(str(amount))
    nanos = value * NANOUSD_PER_USD
    if nanos != nanos.to_integral_value():
        raise ValueError("amounts have at most nine decimals")
    return int(nanos)


def _count_media(content: Any) -> int:
    if not isinstance(content, list):
        return 0
    count = 0
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("image_url", "input_audio", "file"):
            count += 1
    return count


def prompt_token_bound(body: dict[str, Any], context_window: int | None = None) -> int:
    """An upper bound of the prompt tokens of a chat request, for any tokenizer."""
    messages = body.get("messages") or []
    media = sum(_count_media(m.get("content")) for m in messages if isinstance(m, dict))
    bound = (
        len(orjson.dumps(body))
        + PER_REQUEST_TEMPLATE_TOKENS
        + PER_MESSAGE_TEMPLATE_TOKENS * len(messages)
        + max(PER_IMAGE_TOKENS, PER_AUDIO_TOKENS) * media
    )
    if context_window is not None:
        bound = min(bound, context_window)
    return bound


def embedding_token_bound(inputs: list[Any]) -> int:
    """An upper bound of the tokens of an embeddings input (strings or token arrays)."""
    total = 0
    for item in inputs:
        if isinstance(item, str):
            total += len(item.encode()) + 2
        elif isinstance(item, list):
            total += len(item)
        else:
            total += 1
    return total


def estimate_tokens(text_bytes: int) -> int:
    """A fair estimate (about four bytes per token) where the upstream reported no usage."""
    return -(-text_bytes // 4)
