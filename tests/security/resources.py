"""Resources a test user can create through the API, for probes that need something to aim
at. A factory is used only when its route exists, so domains that land later are covered as
soon as they do; if a domain changes its creation body, update it here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tests.security.openapi_probe import INTERNAL, PUBLIC


@dataclass
class Factory:
    kind: str
    method: str
    path: str  # may contain {collection_id}: filled with A's collection
    body: Callable[[str], dict[str, Any]]
    multipart: bool = False


FACTORIES = [
    Factory(
        "collection",
        "POST",
        f"{INTERNAL}/rag/collections",
        lambda m: {"name": m, "description": m},
    ),
    Factory(
        "document",
        "POST",
        f"{INTERNAL}/rag/collections/{{collection_id}}/documents",
        lambda m: {"file": (f"{m}.txt", f"{m} private notes".encode(), "text/plain")},
        multipart=True,
    ),
    Factory(
        "chatbot",
        "POST",
        f"{INTERNAL}/chatbots",
        lambda m: {"name": m, "type": "assistant", "model": "{model}", "system_prompt": m},
    ),
    Factory(
        "webhook",
        "POST",
        f"{INTERNAL}/webhooks",
        lambda m: {
            "url": f"https://hooks.example.com/{m}",
            "events": ["rag.document_processed"],
            "description": m,
        },
    ),
    Factory(
        "workflow",
        "POST",
        f"{INTERNAL}/workflows",
        lambda m: {"name": m, "definition": {"inputs": {}, "steps": []}},
    ),
    Factory("api_key", "POST", f"{INTERNAL}/api-keys", lambda m: {"name": m}),
]


def route_exists(openapi: dict[str, Any], method: str, path: str) -> bool:
    return method.lower() in openapi["paths"].get(path, {})


async def chat_model(client: httpx.AsyncClient, key_headers: dict[str, str]) -> str:
    response = await client.get(f"{PUBLIC}/models", headers=key_headers)
    if response.status_code == 200:
        for model in response.json().get("data", []):
            if "embed" not in model["id"] and "e5" not in model["id"]:
                return str(model["id"])
    return "privatemode-llama-3-70b"


async def create_resources(
    client: httpx.AsyncClient,
    openapi: dict[str, Any],
    owner: dict[str, Any],
    marker: str,
    model: str,
    factories: list[Factory],
) -> dict[str, str]:
    ids: dict[str, str] = {"user": str(owner["id"])}
    for factory in factories:
        if not route_exists(openapi, factory.method, factory.path):
            continue
        path = factory.path.replace("{collection_id}", ids.get("collection", ""))
        body = factory.body(marker)
        if factory.multipart:
            response = await client.request(
                factory.method, path, files=body, headers=owner["headers"]
            )
        else:
            body = {k: (model if v == "{model}" else v) for k, v in body.items()}
            response = await client.request(
                factory.method, path, json=body, headers=owner["headers"]
            )
        assert response.status_code in (200, 201, 202), (
            f"factory for {factory.kind} failed; update its body in FACTORIES: {response.text}"
        )
        ids[factory.kind] = str(response.json()["id"])
    return ids
