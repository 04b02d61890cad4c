"""Threat detection figures: false positives on benign traffic, detection on attack payloads.

``python -m bench.security`` (also run by ``make bench``). Every corpus entry becomes a real
ASGI request through ``ThreatDetectionMiddleware`` in block mode (see
``enclava.testing.threat_corpus``); the corpora live in ``tests/security/data``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from enclava.security.detection import ThreatDetectionMiddleware
from enclava.security.threats import CATEGORIES, RULES
from enclava.testing.threat_corpus import (
    Figures,
    benign_probes,
    echo_app,
    measure_corpus,
    send_probe,
)

DATA = Path(__file__).resolve().parents[2] / "tests" / "security" / "data"


def _report(title: str, figures: Figures) -> None:
    print(title)
    print(
        f"  false positives: {len(figures.false_positives)}/{figures.benign_total} benign "
        f"requests ({figures.false_positive_rate:.2%})"
    )
    for label in figures.false_positives:
        print(f"    FP {label}")
    total = sum(figures.attempted.values())
    detected = sum(figures.detected.values())
    print(f"  detection: {detected}/{total} payload placements ({figures.detection_rate():.1%})")
    for category in CATEGORIES:
        keys = sorted(k for k in figures.attempted if k.startswith(category + "/"))
        parts = ", ".join(
            f"{k.split('/')[1]} {figures.detected[k]}/{figures.attempted[k]}" for k in keys
        )
        print(f"    {category:<9} {parts}")
    for missed in figures.missed:
        print(f"    missed {missed[:110]}")


async def _throughput(rounds: int = 5) -> float:
    """Benign requests per second through the scanner alone (one core, echo app behind it)."""
    app = ThreatDetectionMiddleware(echo_app, mode="block")
    probes = benign_probes(DATA / "benign_management.jsonl", DATA / "benign_prompts.jsonl")
    started = time.perf_counter()
    for _ in range(rounds):
        for probe in probes:
            await send_probe(app, probe)
    return rounds * len(probes) / (time.perf_counter() - started)


def main() -> None:
    logging.getLogger("enclava.security").setLevel(logging.ERROR)
    print(f"{len(RULES)} rules in {len(CATEGORIES)} categories")
    _report("tuning corpora", asyncio.run(measure_corpus(DATA)))
    _report("held-out corpora", asyncio.run(measure_corpus(DATA, holdout=True)))
    print(f"scanner throughput: {asyncio.run(_throughput()):,.0f} requests/s")
