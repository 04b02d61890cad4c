"""Property-based fuzzing of every operation in the OpenAPI document with schemathesis.

The real application is served on loopback (uvicorn, as in production) with threat detection
off, so what is tested is the endpoints' own handling of odd input, not the scanner in front
of them. Internal operations are called with an administrator's JWT (the widest view),
public ones with an API key holding every scope. For each operation a few schema-conforming
and a few schema-violating requests are generated; every response must be free of 5xx and
match the documented schema for its status (errors included: the document describes their
shapes, see ``enclava.security.openapi``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from enclava.app import create_app
from enclava.auth.subject import ALL_SCOPES
from enclava.config import Settings
from enclava.db import create_session_factory, transaction
from enclava.testing.server import serve_in_thread
from tests.conftest import PASSWORD

EXAMPLES_PER_MODE = 6
# Operations that end the session they are called with run last, so the others keep a token.
RUN_LAST = ("/auth/logout",)


# Operations take turns among a few administrators and keys, so per-user and per-key rate
# limits do not turn most generated requests into 429s.
IDENTITIES = 6


async def seed(settings: Settings) -> list[dict[str, str]]:
    from enclava.api_keys import service as keys
    from enclava.auth import service as auth
    from enclava.db import create_engine

    engine = create_engine(settings)
    identities = []
    try:
        async with transaction(create_session_factory(engine)) as session:
            for number in range(IDENTITIES):
                email = f"fuzz-admin-{number}@example.com"
                admin = await auth.create_user(
                    session, email=email, password=PASSWORD, role="admin"
                )
                _, key = await keys.create_key(
                    session,
                    settings.secret_key_value,
                    admin,
                    name="fuzz",
                    scopes=sorted(ALL_SCOPES),
                )
                identities.append({"email": email, "key": key})
    finally:
        await engine.dispose()
    return identities


def credentials_for(path: str, identity: dict[str, str]) -> dict[str, str]:
    if path.startswith("/api-internal/"):
        return {"Authorization": f"Bearer {identity['jwt']}"}
    if path.startswith("/api/v1/"):
        return {"Authorization": f"Bearer {identity['key']}"}
    return {}


def fuzz_operation(
    operation: Any, mode: GenerationMode, headers: dict[str, str]
) -> tuple[int, list[str]]:
    """Run the generated cases of one operation; returns (cases run, failure reports)."""
    cases = 0
    failures: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        nonlocal cases
        cases += 1
        try:
            case.call_and_validate(
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance],
                timeout=30,
            )
        # Collect every failure (schemathesis raises a group) and report them all at the end.
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(str(exc)[:1500])

    try:
        fuzz()
    except Unsatisfiable:
        # Nothing to violate (no parameters, no body): no negative cases exist.
        assert mode is GenerationMode.NEGATIVE, operation.path
    return cases, failures


def test_every_operation_survives_fuzzing(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"threat_detection": "off"}))
    identities = asyncio.run(seed(settings))
    failures: dict[str, list[str]] = {}
    cases = 0
    with serve_in_thread(app) as url:
        for identity in identities:
            login = httpx.post(
                f"{url}/api-internal/v1/auth/login",
                json={"email": identity["email"], "password": PASSWORD},
            )
            identity["jwt"] = login.json()["access_token"]
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        operations.sort(key=lambda op: any(op.path.endswith(last) for last in RUN_LAST))
        assert len(operations) >= 8
        for number, operation in enumerate(operations):
            headers = credentials_for(operation.path, identities[number % IDENTITIES])
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run, failed = fuzz_operation(operation, mode, headers)
                cases += run
                if failed:
                    failures[f"{operation.method.upper()} {operation.path} ({mode})"] = failed
    print(f"schemathesis: {cases} cases over {len(operations)} operations")
    assert failures == {}
    assert cases >= len(operations) * 2
