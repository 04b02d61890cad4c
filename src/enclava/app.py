"""The application factory: every router and middleware, at a glance."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from enclava import __version__
from enclava.api_keys.last_used import STATE_KEY as LAST_USED_KEY
from enclava.api_keys.last_used import LastUsedRecorder
from enclava.api_keys.router import router as api_keys_router
from enclava.audit.router import router as audit_router
from enclava.auth.router import router as auth_router
from enclava.budgets.router import router as budgets_router
from enclava.chatbot import router as chatbot_router
from enclava.config import Settings, get_settings
from enclava.db import create_engine, create_session_factory
from enclava.errors import install_error_handlers
from enclava.health.router import router as health_router
from enclava.kit.cache import create_cache
from enclava.kit.jobs import create_job_queue
from enclava.kit.logging import configure_logging
from enclava.kit.middleware import RequestIdMiddleware
from enclava.llm.router import direct_routes as direct_llm_routes
from enclava.llm.router import router as llm_router
from enclava.rag.router import internal as rag_internal_router
from enclava.rag.router import public as rag_public_router
from enclava.rag.runtime import rag_lifespan
from enclava.ratelimit.middleware import RateLimitHeadersMiddleware
from enclava.security.body_limit import BodySizeLimitMiddleware
from enclava.security.csrf import CsrfMiddleware
from enclava.security.detection import ThreatDetectionMiddleware
from enclava.security.headers import SecurityHeadersMiddleware
from enclava.security.openapi import install_openapi_error_schemas
from enclava.security.router import router as security_router
from enclava.security.text_sanity import TextSanityMiddleware
from enclava.security.url_credentials import UrlCredentialsMiddleware
from enclava.state import AppState
from enclava.users.router import router as users_router
from enclava.web.router import router as web_router
from enclava.web.router import static_files

logger = logging.getLogger(__name__)

PUBLIC_PREFIX = "/api/v1"
# How long settlements wait to be written together (they are written behind the responses).
SETTLEMENT_LINGER_S = 0.05
INTERNAL_PREFIX = "/api-internal/v1"


def _public_api() -> APIRouter:
    router = APIRouter(prefix=PUBLIC_PREFIX)
    router.include_router(llm_router)
    router.include_router(rag_public_router)
    router.include_router(chatbot_router.public)
    return router


def _internal_api() -> APIRouter:
    router = APIRouter(prefix=INTERNAL_PREFIX)
    router.include_router(auth_router)
    router.include_router(users_router)
    router.include_router(budgets_router)
    router.include_router(api_keys_router)
    router.include_router(audit_router)
    router.include_router(rag_internal_router)
    router.include_router(security_router)
    router.include_router(chatbot_router.internal)
    router.include_router(chatbot_router.templates)
    return router


async def _start_llm(state: AppState, stack: AsyncExitStack) -> None:
    """The budget ledger, providers with their pooled HTTP clients, and the model table (see
    enclava.llm). The ledger is released after the runtime has drained its settlements."""
    from enclava.budgets import ledger as budget_ledger
    from enclava.budgets.service import SETTLEMENTS_KEY, SettlementQueue
    from enclava.llm.config import load_llm_config
    from enclava.llm.registry import EMBEDDER_KEY, STATE_KEY, LLMRuntime

    settings = state.settings
    ledger, release_ledger = budget_ledger.create_ledger(
        settings.redis_url,
        settings.resolved_database_url,
        state.cache,
        hold_ttl_s=settings.budget_hold_ttl_s,
    )
    stack.push_async_callback(release_ledger)
    state.extras[budget_ledger.STATE_KEY] = ledger
    settlements = SettlementQueue(
        state.session_factory,
        ledger,
        audit=settings.audit_llm_calls,
        linger_s=SETTLEMENT_LINGER_S,
    )
    state.extras[SETTLEMENTS_KEY] = settlements
    runtime = LLMRuntime(
        load_llm_config(state.settings), settlements, state.extras.get(EMBEDDER_KEY)
    )
    await runtime.start()
    stack.push_async_callback(runtime.aclose)
    state.extras[STATE_KEY] = runtime
    if runtime.embedder is not None:
        state.extras.setdefault(EMBEDDER_KEY, runtime.embedder)


def create_app(
    settings: Settings | None = None, *, freeze_startup_objects: bool = False
) -> FastAPI:
    """The application. ``freeze_startup_objects`` (the served process, not tests that build
    many apps in one process): once started, move every object alive into the garbage
    collector's permanent generation, so full collections no longer walk the libraries,
    models and pools loaded at startup (docs/benchmarks.md: c=64 p99 halved)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            engine = create_engine(settings)
            stack.push_async_callback(engine.dispose)
            cache = create_cache(settings.redis_url)
            stack.push_async_callback(cache.close)
            state = AppState(
                settings=settings,
                engine=engine,
                session_factory=create_session_factory(engine),
                cache=cache,
            )
            app.state.enclava = state
            last_used = LastUsedRecorder(
                state.session_factory, settings.api_key_last_used_debounce_s
            )
            state.extras[LAST_USED_KEY] = last_used
            # Closed before the engine: pending last-used writes are flushed first.
            stack.push_async_callback(last_used.close)
            await _start_llm(state, stack)
            # Domains register their jobs while the queue is idle; it starts once all have, and
            # stops first on shutdown, before the stores its jobs use are closed.
            jobs = create_job_queue(settings.redis_url)
            state.extras["jobs"] = jobs
            await stack.enter_async_context(rag_lifespan(state))
            await jobs.start()
            stack.push_async_callback(jobs.close)
            logger.info(
                "started",
                extra={
                    "version": __version__,
                    "database": "sqlite" if settings.is_embedded_db else "postgresql",
                    "cache": "redis" if settings.redis_url else "memory",
                },
            )
            if freeze_startup_objects:
                gc.collect()
                gc.freeze()
            yield

    app = FastAPI(
        title="Enclava",
        version=__version__,
        description="Confidential AI platform: OpenAI-compatible gateway, RAG and chatbots.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # Ahead of every router: the metered LLM endpoints without FastAPI's per-call dependency
    # solving (enclava.llm.router.direct_routes).
    for path, endpoint in direct_llm_routes(PUBLIC_PREFIX):
        app.router.add_route(path, endpoint, methods=["POST"], include_in_schema=False)
    app.include_router(health_router)
    app.include_router(_public_api())
    app.include_router(_internal_api())
    app.include_router(web_router)
    app.mount("/static", static_files, name="static")
    install_openapi_error_schemas(app)
    app.add_middleware(RateLimitHeadersMiddleware)
    _add_security_middleware(app, settings)
    app.add_middleware(RequestIdMiddleware)  # added last: the outermost layer
    return app


def _add_security_middleware(app: FastAPI, settings: Settings) -> None:
    """docs/security.md. Added innermost first; a request passes them in the reverse order:
    headers, CORS, body limit, text sanity, credentials in URLs, CSRF, threat detection."""
    app.add_middleware(
        ThreatDetectionMiddleware,
        mode=settings.threat_detection,
        max_scan_bytes=settings.threat_scan_max_body_bytes,
    )
    app.add_middleware(CsrfMiddleware, trusted_origins=settings.cors_origins)
    app.add_middleware(UrlCredentialsMiddleware)
    app.add_middleware(TextSanityMiddleware)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_request_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "X-CSRF-Token"],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
            ],
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware, hsts_max_age_s=settings.hsts_max_age_s)


def create_app_from_env() -> FastAPI:
    """Entry point for ``uvicorn --factory`` (used by ``enclava serve --workers N``)."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings, freeze_startup_objects=True)
