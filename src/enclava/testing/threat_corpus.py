"""Measure threat detection on corpora: false positives on benign traffic, detection of attacks.

Each corpus entry becomes a real ASGI request sent through ``ThreatDetectionMiddleware`` in
``block`` mode in front of an echo application, so the figures count exactly what a client
would see (a 403, or its request reaching the application unchanged). Used by
``tests/security`` and ``bench/security``.

Corpora (JSON lines, in ``tests/security/data``; ``*_holdout`` files were written after the
rules were final and are reported separately, see docs/security.md):
- ``benign_management.jsonl``: management requests ``{method, path, query?, headers?, json?|form?}``
- ``benign_prompts.jsonl``: ``{prompt}``, sent as LLM content on every content route and as a
  chatbot's system prompt
- ``attack_payloads.jsonl``: ``{category, payload}``, placed in a JSON field, a query parameter
  and (traversal) a path segment of management requests
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from starlette.types import Message, Receive, Scope, Send

from enclava.security.detection import ThreatDetectionMiddleware

INTERNAL = "/api-internal/v1"
PUBLIC = "/api/v1"
SOME_ID = "3f1c9a8e-5b7d-4c2e-9a1f-0d6b8e2c4a10"
_LOOKS_ENCODED = re.compile(r"%[0-9a-fA-F]{2}|%u[0-9a-fA-F]{4}")


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@dataclass
class Probe:
    method: str
    path: str  # as sent on the wire (percent-encoded where needed)
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str | None = None
    label: str = ""

    @classmethod
    def from_entry(cls, entry: dict[str, Any], label: str = "") -> Probe:
        body, content_type = b"", None
        if "json" in entry:
            body, content_type = json.dumps(entry["json"]).encode(), "application/json"
        elif "form" in entry:
            body = urlencode(entry["form"]).encode()
            content_type = "application/x-www-form-urlencoded"
        return cls(
            entry["method"],
            entry["path"],
            entry.get("query", ""),
            dict(entry.get("headers", {})),
            body,
            content_type,
            label or f"{entry['method']} {entry['path']}",
        )


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 with the body it received."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"".join(chunks)})


async def send_probe(app: Any, probe: Probe) -> tuple[int, bytes]:
    """Send ``probe`` to the ASGI ``app``; returns the status and the response body."""
    headers = [(b"host", b"testserver")]
    headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in probe.headers.items()]
    if probe.content_type:
        headers.append((b"content-type", probe.content_type.encode()))
        headers.append((b"content-length", str(len(probe.body)).encode()))
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": probe.method,
        "scheme": "http",
        "path": unquote(probe.path),
        "raw_path": probe.path.encode("latin-1", "backslashreplace"),
        "query_string": probe.query.encode("latin-1", "backslashreplace"),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent = False
    response: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": probe.body, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response["status"] = message["status"]
        elif message["type"] == "http.response.body":
            response["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return response["status"], response["body"]


def benign_probes(management: Path, prompts: Path | None = None) -> list[Probe]:
    probes = [Probe.from_entry(e) for e in load_jsonl(management)]
    for entry in load_jsonl(prompts) if prompts else []:
        prompt = entry["prompt"]
        message = [{"role": "user", "content": prompt}]
        content_requests: list[tuple[str, dict[str, Any]]] = [
            (f"{PUBLIC}/chat/completions", {"model": "m", "messages": message}),
            (f"{PUBLIC}/embeddings", {"model": "multilingual-e5-small", "input": [prompt]}),
            (f"{PUBLIC}/chatbot/interact", {"chatbot_id": SOME_ID, "message": prompt}),
            (f"{PUBLIC}/chatbot/{SOME_ID}/chat/completions", {"messages": message}),
            (f"{INTERNAL}/chatbots/{SOME_ID}/chat", {"message": prompt}),
            (f"{PUBLIC}/rag/collections/{SOME_ID}/search", {"query": prompt, "top_k": 5}),
            (f"{INTERNAL}/rag/collections/{SOME_ID}/search", {"query": prompt}),
            (f"{INTERNAL}/workflows/{SOME_ID}/run", {"inputs": {"topic": prompt}}),
            # Management requests whose LLM-content fields carry the prompt.
            (f"{INTERNAL}/chatbots", {"name": "Helper", "model": "m", "system_prompt": prompt}),
            (f"{INTERNAL}/prompt-templates", {"key": "t1", "name": "T", "template": prompt}),
        ]
        for path, body in content_requests:
            probes.append(Probe.from_entry({"method": "POST", "path": path, "json": body}))
    return probes


def attack_probes(payloads: Path) -> list[tuple[str, str, Probe]]:
    """(category, location, probe) for every payload in every location it makes sense in."""
    probes = []
    for entry in load_jsonl(payloads):
        category, payload = entry["category"], entry["payload"]
        # Payloads that are already encoded are sent as the attacker would: as they are.
        as_sent = payload if _LOOKS_ENCODED.search(payload) else quote(payload, safe="")
        probes.append(
            (
                category,
                "body",
                Probe.from_entry(
                    {
                        "method": "POST",
                        "path": f"{INTERNAL}/rag/collections",
                        "json": {"name": payload, "description": "x"},
                    }
                ),
            )
        )
        probes.append(
            (category, "query", Probe("GET", f"{INTERNAL}/audit-logs", query=f"search={as_sent}"))
        )
        if category == "traversal":
            path = f"{INTERNAL}/rag/documents/{as_sent}"
            probes.append((category, "path", Probe("GET", path)))
    return probes


@dataclass
class Figures:
    benign_total: int
    false_positives: list[str]
    detected: Counter[str]
    attempted: Counter[str]
    missed: list[str]

    @property
    def false_positive_rate(self) -> float:
        return len(self.false_positives) / self.benign_total if self.benign_total else 0.0

    def detection_rate(self, category: str | None = None) -> float:
        if category is None:
            total = sum(self.attempted.values())
            return sum(self.detected.values()) / total if total else 0.0
        return self.detected[category] / self.attempted[category]


async def measure(benign: list[Probe], attacks: list[tuple[str, str, Probe]]) -> Figures:
    app = ThreatDetectionMiddleware(echo_app, mode="block")
    false_positives = []
    for probe in benign:
        status, body = await send_probe(app, probe)
        if status != 200 or body != probe.body:
            false_positives.append(probe.label)
    detected: Counter[str] = Counter()
    attempted: Counter[str] = Counter()
    missed = []
    for category, location, probe in attacks:
        key = f"{category}/{location}"
        attempted[key] += 1
        status, _ = await send_probe(app, probe)
        if status == 403:
            detected[key] += 1
        else:
            missed.append(f"{key}: {probe.body.decode() or probe.query or probe.path}")
    return Figures(len(benign), false_positives, detected, attempted, missed)


async def measure_corpus(data_dir: Path, *, holdout: bool = False) -> Figures:
    """The figures for the tuning corpora (round 1, and round 2 which was first written as a
    held-out set and then used to extend the rules), or for the held-out corpora written after
    the rules were final and never used to change them."""
    if holdout:
        benign = benign_probes(data_dir / "benign_management_holdout.jsonl")
        attacks = attack_probes(data_dir / "attack_payloads_holdout.jsonl")
    else:
        benign = benign_probes(
            data_dir / "benign_management.jsonl", data_dir / "benign_prompts.jsonl"
        )
        benign += benign_probes(data_dir / "benign_management_round2.jsonl")
        attacks = attack_probes(data_dir / "attack_payloads.jsonl")
        attacks += attack_probes(data_dir / "attack_payloads_round2.jsonl")
    return await measure(benign, attacks)
