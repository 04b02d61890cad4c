from __future__ import annotations

from decimal import Decimal

import pytest

from enclava.llm import pricing
from enclava.testing.mock_upstream import prompt_tokens_of


def test_costs_are_exact_integers_rounded_up() -> None:
    price = pricing.Price.from_usd(Decimal("0.50"), Decimal("1.50"))
    assert (price.input_per_million, price.output_per_million) == (500_000_000, 1_500_000_000)
    assert price.cost(1000, 200) == 500_000 + 300_000
    tiny = pricing.Price.from_usd(Decimal("0.0375"), Decimal(0))
    # 37.5 nano-dollars per token: exact for even counts, rounded up (never down) for odd ones.
    assert (tiny.cost(1, 0), tiny.cost(2, 0), tiny.cost(1000, 0)) == (38, 75, 37_500)
    assert pricing.usd(1_234_500_000) == "1.2345" and pricing.usd(0) == "0"
    assert pricing.to_nanousd("12.5") == 12_500_000_000
    with pytest.raises(ValueError):
        pricing.to_nanousd("0.0000000001")


def test_prompt_bound_covers_tokenizers_and_media() -> None:
    body = {"messages": [{"role": "user", "content": "héllo wörld " * 50}]}
    bound = pricing.prompt_token_bound(body)
    # At least one token per UTF-8 byte of content.
    assert bound >= len(("héllo wörld " * 50).encode())
    assert bound >= prompt_tokens_of(body["messages"])
    with_image = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
            }
        ]
    }
    assert pricing.prompt_token_bound(with_image) >= pricing.PER_IMAGE_TOKENS
    assert pricing.prompt_token_bound(body, context_window=100) == 100
    assert pricing.embedding_token_bound(["abc", [1, 2, 3]]) == 3 + 2 + 3
