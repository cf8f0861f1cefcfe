"""`grpod api`: the HTTP API for agents and operators (FastAPI, served by uvicorn).

Every route but the health checks needs ``Authorization: Bearer <token>`` (``grpod token
create``): no token, or an unknown or revoked one, is 401; a token outside its domains or scopes
is 403, and nothing is read or changed. Tokens are never logged: uvicorn's access log is off, and
grpod logs the token's name. The OpenAPI document is at ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import atexit
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Annotated, Any, TypeVar

import orjson
import psycopg
import structlog
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from grpod.daemon import access, library_admin, resources, token_store
from grpod.daemon.access import Scope, Token
from grpod.daemon.api import dashboard
from grpod.daemon.metrics import DatabaseCollector
from grpod.daemon.status import queue_depths
from grpod.schema.errors import NotFoundError, OperatorError
from grpod.schema.library import Library
from grpod.schema.sql import load_queries
from grpod.sdk.client import Client

log = structlog.stdlib.get_logger(__name__)

DEFAULT_TOKEN_BUDGET = 2000  # as the SDK's
MAX_WAIT_SECONDS = 60.0
WAIT_POLL_SECONDS = 0.5
T = TypeVar("T")


@contextmanager
def _connection() -> Iterator[psycopg.Connection[Any]]:
    with resources.pool().connection() as conn:
        yield conn


def _problem(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def authenticated(authorization: Annotated[str | None, Header()] = None) -> Token:
    secret = access.bearer(authorization)
    if secret is None:
        raise HTTPException(
            401, "send Authorization: Bearer <token> (`grpod token create`)", {"WWW-Authenticate": "Bearer"}
        )
    with _connection() as conn:
        token = token_store.authenticate(conn, secret)
    if token is None:
        raise HTTPException(401, "the token is unknown or revoked", {"WWW-Authenticate": "Bearer"})
    structlog.contextvars.bind_contextvars(token=token.name)
    return token


Authenticated = Annotated[Token, Depends(authenticated)]
Reason = Annotated[str, Body(min_length=1, max_length=2000, embed=True)]  # kept in the audit log


def require(token: Token, scope: Scope, domain: str | None = None) -> None:
    if not access.permits(token, scope, domain):
        where = f" on domain {domain!r}" if domain is not None else ""
        raise _problem(403, f"token {token.name!r} may not {scope}{where}")


def _operator_call(run: Callable[[psycopg.Connection[Any]], T]) -> T:
    """An operator action or read: its OperatorError is a 409 (or 404) with the CLI's sentence."""
    try:
        with _connection() as conn:
            return run(conn)
    except NotFoundError as error:
        raise _problem(404, str(error)) from None
    except OperatorError as error:
        raise _problem(409, str(error)) from None


def create_app() -> FastAPI:
    app = FastAPI(
        title="grpod",
        summary="Continual learning for LLM agents: events in, experience libraries out.",
        version="1",
    )

    @app.exception_handler(HTTPException)
    async def problem(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    dashboard.install(app)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui", status_code=307)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, bool]:
        """The API process answers."""
        return {"ok": True}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """The API can reach its database."""
        try:
            with _connection() as conn:
                conn.execute("SELECT 1")
        except Exception:
            return JSONResponse({"ok": False, "reason": "the database does not answer"}, status_code=503)
        return JSONResponse({"ok": True})

    @app.get("/v1/libraries/{domain}", tags=["agents"])
    async def library(
        domain: str,
        token: Authenticated,
        response: Response,
        label: Annotated[str, Query(pattern="^(production|candidate)$")] = "production",
        version: Annotated[int | None, Query(ge=0)] = None,
        token_budget: Annotated[int | None, Query(ge=0)] = DEFAULT_TOKEN_BUDGET,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0.0,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Any:
        """A library: its version, experiences and rendered prompt block, with an ETag. With
        ``If-None-Match`` it is 304 while unchanged; ``wait`` holds a 304 until it changes or the
        seconds pass, so an agent hears of a rollback at once without polling."""
        require(token, "read", domain)
        deadline = time.monotonic() + wait
        while True:
            body = await run_in_threadpool(_library_body, domain, label, version, token_budget)
            etag = f'"{body["version"]}.{token_budget if token_budget is not None else "all"}"'
            if if_none_match is None or if_none_match.strip() != etag or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if if_none_match is not None and if_none_match.strip() == etag:
            return Response(status_code=304, headers=headers)
        response.headers.update(headers)
        return body

    @app.get("/v1/libraries/{domain}/history", tags=["operators"])
    def history(domain: str, token: Authenticated, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        require(token, "operate", domain)
        return _operator_call(lambda conn: library_admin.history(conn, domain, limit))

    @app.get("/v1/libraries/{domain}/diff", tags=["operators"])
    def diff(domain: str, token: Authenticated, a: Annotated[int, Query(ge=0)], b: Annotated[int, Query(ge=0)]) -> Any:
        require(token, "operate", domain)
        return _operator_call(lambda conn: library_admin.diff(conn, domain, a, b))

    @app.get("/v1/libraries/{domain}/log", tags=["operators"])
    def audit_log(domain: str, token: Authenticated, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        require(token, "operate", domain)
        return _operator_call(lambda conn: library_admin.events(conn, domain, limit))

    @app.post("/v1/libraries/{domain}/rollback", tags=["operators"])
    def rollback(domain: str, token: Authenticated, to: Annotated[int, Body(ge=0, embed=True)], reason: Reason) -> Any:
        require(token, "operate", domain)
        return _operator_call(lambda conn: library_admin.rollback(conn, domain, to, reason=reason, actor=_actor(token)))

    @app.post("/v1/libraries/{domain}/promote", tags=["operators"])
    def promote(
        domain: str, token: Authenticated, version: Annotated[int, Body(ge=1, embed=True)], reason: Reason
    ) -> Any:
        require(token, "operate", domain)
        return _operator_call(
            lambda conn: library_admin.promote(conn, domain, version, reason=reason, actor=_actor(token))
        )

    @app.post("/v1/libraries/{domain}/pin", tags=["operators"])
    def pin(
        domain: str,
        token: Authenticated,
        reason: Reason,
        version: Annotated[int | None, Body(ge=1, embed=True)] = None,
    ) -> Any:
        require(token, "operate", domain)
        return _operator_call(lambda conn: library_admin.pin(conn, domain, version, reason=reason, actor=_actor(token)))

    @app.post("/v1/libraries/{domain}/unpin", tags=["operators"])
    def unpin(domain: str, token: Authenticated, reason: Reason) -> Any:
        require(token, "operate", domain)
        return _operator_call(lambda conn: library_admin.unpin(conn, domain, reason=reason, actor=_actor(token)))

    @app.post("/v1/libraries/{domain}/freeze", tags=["operators"])
    def freeze(domain: str, token: Authenticated, reason: Reason) -> Any:
        require(token, "operate", domain)
        return _operator_call(
            lambda conn: library_admin.set_frozen(conn, domain, True, reason=reason, actor=_actor(token))
        )

    @app.post("/v1/libraries/{domain}/unfreeze", tags=["operators"])
    def unfreeze(domain: str, token: Authenticated, reason: Reason) -> Any:
        require(token, "operate", domain)
        return _operator_call(
            lambda conn: library_admin.set_frozen(conn, domain, False, reason=reason, actor=_actor(token))
        )

    @app.post("/v1/events", tags=["agents"])
    async def events(request: Request, token: Authenticated) -> Any:
        """A JSON array of trace and reward events, validated as the queue does. The valid ones are
        published (with confirms, or into the embedded spool); the others are kept in the rejected
        store, and the answer gives each one's index and reason. An event for a domain outside the
        token's is 403, and nothing of the request is published or kept."""
        require(token, "publish")
        limit = resources.settings().api_max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _problem(413, f"the body is {declared} bytes; the limit is {limit} (GRPOD_API_MAX_BODY_BYTES)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _problem(413, f"the body is over {limit} bytes (GRPOD_API_MAX_BODY_BYTES)")
        return await run_in_threadpool(publish_events, token, bytes(body))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(_connection, lambda: queue_depths(resources.settings())))

    @app.get("/metrics", tags=["operators"])
    def metrics(token: Authenticated) -> Response:
        """Prometheus metrics of the whole deployment, read from PostgreSQL (a token that operates
        every domain: the metrics cover them all)."""
        if not access.permits(token, "operate") or token.domains is not None:
            raise _problem(403, f"token {token.name!r} may not read the metrics: they need operate on --all-domains")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/status", tags=["operators"])
    def status(token: Authenticated) -> Any:
        """The deployment's status (`grpod status --json`), its domains cut to the token's."""
        require(token, "operate")
        from grpod.daemon.status import collect_status

        report = collect_status(resources.settings(), resources.database_url())
        report["domains"] = [d for d in report.get("domains", []) if access.permits(token, "operate", d["domain"])]
        return report

    return app


def _actor(token: Token) -> str:
    return f"token:{token.name}"


def _library_body(domain: str, label: str, version: int | None, token_budget: int | None) -> dict[str, Any]:
    from grpod.workers import library_store

    with _connection() as conn:
        if version is None:
            chosen = library_store.labels(conn, domain).get(label, 0)
        else:
            if version and not library_store.version_exists(conn, domain, version):
                raise _problem(404, f"domain {domain!r} has no library version {version}")
            chosen = version
        stored = library_store.load(conn, domain, chosen)
    # Built as the SDK's cache builds what it serves: the same prompt block for the same version.
    library = Library.from_rows(domain, label, chosen, [e.to_json() for e in stored.experiences.values()], token_budget)
    return {
        "domain": domain,
        "label": label if version is None else None,
        "version": chosen,
        "experiences": [{"id": e.id, "text": e.text, "usefulness": e.usefulness} for e in library.experiences],
        "prompt": library.prompt,
    }


@cache
def _client() -> Client:
    """One publisher for the process (the SDK's client is thread-safe): one broker connection for
    every request, not one each."""
    client = Client(resources.settings())
    atexit.register(client.close)
    return client


def publish_events(token: Token, body: bytes) -> dict[str, Any]:
    """Validate, check the token's domains, publish the valid events, keep the rejected ones."""
    from grpod.schema.events import Accepted, TraceEvent, parse_event
    from grpod.sdk.client import ValidEvent
    from grpod.sdk.publish import PublishError
    from grpod.workers.ingest import Incoming, insert_rejections

    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _problem(400, f"the body is not JSON: {error}") from None
    if not isinstance(items, list):
        raise _problem(400, f"the body must be a JSON array of events, not a JSON {type(items).__name__}")
    settings = resources.settings()
    limits = settings.limits()
    raws = [orjson.dumps(item) for item in items]
    parsed = [parse_event(raw, limits) for raw in raws]
    accepted = [(i, p) for i, p in enumerate(parsed) if isinstance(p, Accepted)]
    rejected = [(i, p) for i, p in enumerate(parsed) if not isinstance(p, Accepted)]
    with _connection() as conn:
        for index, valid in accepted:
            event = valid.event
            domain = event.domain if isinstance(event, TraceEvent) else _trace_domain(conn, event.trace_id)
            if domain is not None and not access.permits(token, "publish", domain):
                raise _problem(
                    403, f"event {index} is for domain {domain!r}, which token {token.name!r} may not publish to"
                )
        if accepted:
            try:
                _client().record_batch([ValidEvent(valid.document) for _, valid in accepted])
            except PublishError as error:
                raise _problem(
                    503, f"the events could not be handed to the broker; none was accepted: {error}"
                ) from None
        if rejected:  # kept with their reasons, as the queue's are
            with conn.transaction(), conn.cursor() as cursor:
                insert_rejections(
                    cursor, [(Incoming(raws[i], f"api:{token.name}"), r) for i, r in rejected], limits.max_event_bytes
                )
    log.info("events received over HTTP", accepted=len(accepted), rejected=len(rejected))
    return {
        "accepted": len(accepted),
        "rejected": [{"index": i, "reason": r.reason.value, "detail": r.detail} for i, r in rejected],
    }


def _trace_domain(conn: psycopg.Connection[Any], trace_id: str) -> str | None:
    """The domain of a reward's trace when it is stored (a reward may come before its trace)."""
    row = conn.execute(
        load_queries("grpod.schema", "queries/api.sql")["trace_domain"], {"trace_id": trace_id}
    ).fetchone()
    return str(row[0]) if row is not None else None
