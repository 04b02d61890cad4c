"""The floor: the least a Python gateway can do on this machine, as a benchmark target.

A bare ASGI app on the same server stack as Enclava (uvicorn, httptools, uvloop) that parses
the JSON body, forwards it with a pooled aiohttp client to the upstream, parses the answer and
sends it back: no authentication, no limits, no budget, no records, no middleware. Whatever
this costs over calling the upstream directly, every Python gateway pays; Enclava's own cost
is what it adds on top. Run by ``bench.gateway`` as the ``floor`` target:

    ENCLAVA_FLOOR_UPSTREAM=http://127.0.0.1:8001 uvicorn bench.gateway.floor:app --loop uvloop --http httptools
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import orjson

UPSTREAM = os.environ.get("ENCLAVA_FLOOR_UPSTREAM", "http://127.0.0.1:8001")
_session: aiohttp.ClientSession | None = None


async def _lifespan(receive: Any, send: Any) -> None:
    global _session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _session is not None:
                await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = orjson.loads(body)
    request["model"] = "mock-chat"
    assert _session is not None
    async with _session.post(
        UPSTREAM + "/v1/chat/completions",
        data=orjson.dumps(request),
        headers={"content-type": "application/json"},
    ) as response:
        status = response.status
        answer = orjson.loads(await response.read())
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": orjson.dumps(answer)})
