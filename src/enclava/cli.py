"""The ``enclava`` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from enclava.config import Settings, SettingsError, get_settings

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Enclava: confidential AI platform.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
users_app = typer.Typer(no_args_is_help=True, help="User accounts.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys and encryption keys.")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
rag_app = typer.Typer(no_args_is_help=True, help="RAG collections (through a running server).")
app.add_typer(rag_app, name="rag")


def _load_settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def run_with_session(settings: Settings, work: Callable[..., Awaitable[T]]) -> T:
    """Run ``work(session)`` in one committed transaction against the configured database."""
    from enclava.db import create_engine, create_session_factory, transaction

    async def runner() -> T:
        engine = create_engine(settings)
        try:
            async with transaction(create_session_factory(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(runner())


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the API and dashboard (migrates the embedded database first)."""
    import uvicorn

    from enclava.kit.logging import configure_logging
    from enclava.migrations import runner

    settings = _load_settings()
    configure_logging(settings.log_level)
    if workers > 1 and (
        settings.is_embedded_db or not settings.redis_url or not settings.qdrant_url
    ):
        _fail(
            "--workers > 1 needs PostgreSQL, Redis and a Qdrant server "
            "(ENCLAVA_DATABASE_URL, ENCLAVA_REDIS_URL, ENCLAVA_QDRANT_URL): the embedded stores "
            "belong to one process"
        )
    if settings.is_embedded_db:
        runner.upgrade(settings)
    uvicorn.run(
        "enclava.app:create_app_from_env",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=10,
    )


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the database to the latest schema."""
    from enclava.migrations import runner

    runner.upgrade(_load_settings(), revision)
    typer.echo("database is at the latest revision")


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="Login email.")],
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="Password.")
    ],
    role: Annotated[str, typer.Option(help="admin or user.")] = "user",
    full_name: Annotated[str | None, typer.Option(help="Display name.")] = None,
) -> None:
    """Create a user (the first one can be the administrator the setup form would create)."""
    from enclava.auth import service
    from enclava.errors import AppError

    settings = _load_settings()

    async def work(session: object) -> str:
        user = await service.create_user(
            session,  # type: ignore[arg-type]
            email=email,
            password=password,
            role=role,
            full_name=full_name,
        )
        return str(user.id)

    try:
        user_id = run_with_session(settings, work)
    except AppError as exc:
        _fail(exc.message)
    typer.echo(json.dumps({"id": user_id, "email": email.strip().lower(), "role": role}))


@app.command("mock-upstream")
def mock_upstream(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    latency_ms: Annotated[float, typer.Option(help="Delay before each answer.")] = 0.0,
    latency_jitter_ms: Annotated[
        float, typer.Option(min=0, help="Spread each delay uniformly over latency ± this.")
    ] = 0.0,
    completion_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 12,
) -> None:
    """Serve the OpenAI-compatible simulator (for demos, tests and benchmarks)."""
    from enclava.testing.mock_upstream import serve

    typer.echo(f"mock upstream on http://{host}:{port}/v1", err=True)
    serve(
        host=host,
        port=port,
        latency_ms=latency_ms,
        latency_jitter_ms=latency_jitter_ms,
        completion_tokens=completion_tokens,
    )


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option(help="Email of the key's owner.")],
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")],
    tier: Annotated[str, typer.Option(help="Rate-limit tier: standard or premium.")] = "standard",
    scopes: Annotated[
        str | None,
        typer.Option(help="Comma-separated scopes (default llm.chat,llm.embeddings,llm.models)."),
    ] = None,
    budget: Annotated[
        str | None, typer.Option(help="Hard budget in USD for the key (needs --period).")
    ] = None,
    period: Annotated[
        str | None, typer.Option(help="Budget period: daily, weekly, monthly or total.")
    ] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model ids the key may use (default all).")
    ] = None,
    confidential_only: Annotated[
        bool, typer.Option("--confidential-only", help="Only confidential providers.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Create an API key and print it (it is shown only this once)."""
    from enclava.api_keys import service
    from enclava.audit import service as audit
    from enclava.auth import repository
    from enclava.budgets.service import create_budget
    from enclava.errors import AppError

    if (budget is None) != (period is None):
        _fail("--budget and --period go together")
    settings = _load_settings()

    async def work(session: object) -> dict[str, object]:
        owner = await repository.get_user_by_email(session, user)  # type: ignore[arg-type]
        if owner is None:
            raise typer.BadParameter(f"no user with email {user!r}", param_hint="--user")
        api_key, plaintext = await service.create_key(
            session,  # type: ignore[arg-type]
            settings.secret_key_value,
            owner,
            name=name,
            scopes=_split(scopes),
            tier=tier,
            allowed_models=_split(models),
            confidential_only=confidential_only,
        )
        audit.record(
            session,  # type: ignore[arg-type]
            action="api_key.create",
            user_id=owner.id,
            resource_type="api_key",
            resource_id=api_key.id,
            details={"owner_id": str(owner.id), "name": api_key.name, "via": "cli"},
        )
        created: dict[str, object] = {
            "id": str(api_key.id),
            "key": plaintext,
            "name": api_key.name,
            "user": owner.email,
            "user_id": str(owner.id),
            "scopes": api_key.scopes,
            "tier": api_key.tier,
            "allowed_models": api_key.allowed_models,
            "confidential_only": api_key.confidential_only,
        }
        if budget is not None and period is not None:
            # The key is new, so no instance has its budgets in the ledger yet: nothing to
            # invalidate (docs/decisions/0009-budget-ledger.md).
            row = await create_budget(
                session,  # type: ignore[arg-type]
                api_key_id=api_key.id,
                name=f"{api_key.name} budget",
                limit_usd=budget,
                period=period,
            )
            created["budget"] = {"id": str(row.id), "limit_usd": budget, "period": period}
        return created

    try:
        created = run_with_session(settings, work)
    except AppError as exc:
        _fail(exc.message)
    except typer.BadParameter as exc:
        _fail(str(exc))
    typer.echo(json.dumps(created) if as_json else str(created["key"]))


@rag_app.command("ingest")
def rag_ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (walked recursively).")],
    collection: Annotated[str, typer.Option(help="Collection name; created when missing.")],
    user: Annotated[str, typer.Option(help="Email of the account that owns the collection.")],
    server: Annotated[
        str, typer.Option(envvar="ENCLAVA_SERVER_URL", help="The running Enclava server.")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None,
        typer.Option(envvar="ENCLAVA_API_KEY", help="API key with rag.write (else a password)."),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(envvar="ENCLAVA_PASSWORD", help="Password of --user (prompted if needed)."),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until every document is processed.")] = True,
) -> None:
    """Upload documents to a collection with a progress bar and report each file's result."""
    from rich.console import Console

    from enclava.rag.ingest_client import IngestClient, IngestError, ingest, results_table

    if not api_key and password is None:
        password = typer.prompt(f"Password for {user}", hide_input=True)
    try:
        client = IngestClient(server, user=user, api_key=api_key, password=password)
    except IngestError as exc:
        _fail(str(exc))
    try:
        results = ingest(client, collection, paths, wait=wait)
    except IngestError as exc:
        _fail(str(exc))
    finally:
        client.close()
    Console().print(results_table(collection, results))
    if not all(result.ok for result in results):
        raise typer.Exit(1)


@keys_app.command("rotate-encryption")
def keys_rotate_encryption(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be re-encrypted; write nothing.")
    ] = False,
) -> None:
    """Re-encrypt every secret at rest under ENCLAVA_ENCRYPTION_KEY.

    Set the new key as ENCLAVA_ENCRYPTION_KEY and the old one(s) in
    ENCLAVA_ENCRYPTION_KEY_PREVIOUS (comma-separated) first; remove the old ones afterwards.
    """
    from enclava.db import create_engine
    from enclava.kit.crypto import SecretBox
    from enclava.models import Base
    from enclava.security.rotation import RotationError, rotate_encryption

    settings = _load_settings()
    box = SecretBox(settings.encryption_key_value, *settings.previous_encryption_keys)

    async def runner() -> dict[str, object]:
        engine = create_engine(settings)
        try:
            report = await rotate_encryption(engine, box, Base.metadata, dry_run=dry_run)
        finally:
            await engine.dispose()
        return report.as_dict()

    try:
        result = asyncio.run(runner())
    except RotationError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({**result, "dry_run": dry_run}))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
