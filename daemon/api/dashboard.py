"""The operator dashboard at ``/ui``: server-rendered pages (Jinja2) over the same operator
actions and reads as the CLI and the API, with no build step and no script.

A browser signs in once with an operate token, which is then kept in an HttpOnly, SameSite=Strict
cookie scoped to ``/ui``; a request with ``Authorization: Bearer`` is served too. Each page shows
only the domains the token operates. A form that changes something needs a reason, which goes to
the audit log with ``token:<name>`` as the actor. SameSite=Strict keeps other sites' forms from
carrying the cookie, and a POST whose Origin is another site is refused as well.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode, urlsplit

import psycopg
import structlog
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.templating import Jinja2Templates

from grpod.daemon import access, library_admin, rejected, resources, token_store
from grpod.daemon.access import Token
from grpod.daemon.api import dashboard_store
from grpod.daemon.api.timeline import timeline
from grpod.schema.errors import NotFoundError, OperatorError

log = structlog.stdlib.get_logger(__name__)

COOKIE = "grpod_session"
ACTIONS = ("rollback", "promote", "pin", "unpin", "freeze", "unfreeze")
T = TypeVar("T")

templates = Jinja2Templates(
    env=Environment(
        loader=PackageLoader("grpod.daemon.api", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
)
templates.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str)


class SignInRequiredError(Exception):
    """The request has no usable token: a browser goes to the sign-in page, a bearer gets 401."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RefusedError(Exception):
    """The token may not do this (403), or the thing is not there (404)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _same_origin(request: Request) -> bool:
    """A POST from a page of this host (a client that sends no Origin, as curl, is no browser)."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


def operator(request: Request) -> Token:
    """The operate token of the request: its bearer header, else the session cookie."""
    secret = access.bearer(request.headers.get("authorization")) or request.cookies.get(COOKIE)
    if secret is None:
        raise SignInRequiredError("sign in with an operate token (`grpod token create NAME --scope operate ...`)")
    with resources.pool().connection() as conn:
        token = token_store.authenticate(conn, secret)
    if token is None:
        raise SignInRequiredError("the token is unknown or revoked; sign in again")
    if not access.permits(token, "operate"):
        raise RefusedError(403, f"token {token.name!r} has no operate scope; the dashboard needs one")
    if request.method == "POST" and not _same_origin(request):
        raise RefusedError(403, "this form was sent from another site; open the dashboard and send it from there")
    structlog.contextvars.bind_contextvars(token=token.name)
    return token


Operator = Annotated[Token, Depends(operator)]
Reason = Annotated[str, Form(min_length=1, max_length=2000)]


def _require_domain(token: Token, domain: str) -> None:
    if not access.permits(token, "operate", domain):
        raise RefusedError(403, f"token {token.name!r} may not operate on domain {domain!r}")


def _read(run: Callable[[psycopg.Connection[Any]], T]) -> T:
    try:
        with resources.pool().connection() as conn:
            return run(conn)
    except NotFoundError as error:
        raise RefusedError(404, str(error)) from None
    except OperatorError as error:
        raise RefusedError(409, str(error)) from None


def _page(request: Request, token: Token, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context |= {
        "token": token,
        "notice": request.query_params.get("notice"),
        "error": request.query_params.get("error"),
    }
    return templates.TemplateResponse(request, name, context, status_code=status)


def _back(path: str, **message: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?{urlencode(message)}" if message else path, status_code=303)


def install(app: FastAPI) -> None:
    """Add the dashboard's routes and its sign-in handling to ``app``."""
    app.include_router(router)

    @app.exception_handler(SignInRequiredError)
    async def sign_in(request: Request, error: SignInRequiredError) -> Response:
        if request.headers.get("authorization"):
            return Response(error.reason, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        answer = _back("/ui/login", next=wanted, error=error.reason)
        answer.delete_cookie(COOKIE, path="/ui")
        return answer

    @app.exception_handler(RefusedError)
    async def refused(request: Request, error: RefusedError) -> Response:
        return templates.TemplateResponse(
            request, "refused.html", {"reason": error.reason, "status": error.status}, status_code=error.status
        )


router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/login")
def login_page(request: Request, next: str = "/ui") -> HTMLResponse:
    return templates.TemplateResponse(
        request, "login.html", {"next": _local(next), "error": request.query_params.get("error")}
    )


def _local(path: str) -> str:
    """Only a path of the dashboard is a place to return to (no open redirect)."""
    return path if path.startswith("/ui") and not path.startswith("//") else "/ui"


@router.post("/login")
def login(
    request: Request, token: Annotated[str, Form(max_length=200)], next: Annotated[str, Form()] = "/ui"
) -> Response:
    if not _same_origin(request):
        raise RefusedError(403, "this form was sent from another site")
    with resources.pool().connection() as conn:
        found = token_store.authenticate(conn, token.strip())
    if found is None or not access.permits(found, "operate"):
        reason = "that token is unknown or revoked" if found is None else f"token {found.name!r} has no operate scope"
        return templates.TemplateResponse(
            request, "login.html", {"next": _local(next), "error": reason}, status_code=401
        )
    log.info("signed in to the dashboard", token=found.name)
    answer = RedirectResponse(_local(next), status_code=303)
    answer.set_cookie(
        COOKIE, token.strip(), httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/ui"
    )
    return answer


@router.post("/logout")
def logout(_: Operator) -> Response:
    answer = RedirectResponse("/ui/login", status_code=303)
    answer.delete_cookie(COOKIE, path="/ui")
    return answer


@router.get("")
@router.get("/")
def overview(request: Request, token: Operator) -> HTMLResponse:
    def read(conn: psycopg.Connection[Any]) -> tuple[list[dict[str, Any]], int | None]:
        domains = dashboard_store.overview(conn, token.domains)
        unattributed = dashboard_store.unattributed_rejected(conn) if token.domains is None else None
        return domains, unattributed

    domains, unattributed = _read(read)
    return _page(
        request,
        token,
        "overview.html",
        domains=domains,
        unattributed=unattributed,
        window=dashboard_store.RATE_WINDOW_SECONDS,
    )


@router.get("/domains/{domain}")
def library(request: Request, token: Operator, domain: str) -> HTMLResponse:
    _require_domain(token, domain)

    def read(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        current = library_admin.show(conn, domain)
        return {
            "current": current,
            "history": library_admin.history(conn, domain, 200),
            "audit": library_admin.events(conn, domain, 20),
        }

    found = _read(read)
    versions = [row["version"] for row in found["history"]]
    return _page(
        request,
        token,
        "library.html",
        domain=domain,
        chart=timeline(found["history"]),
        versions=versions,
        labels={label: row["version"] for row in found["history"] for label in row["labels"]},
        **found,
    )


@router.get("/domains/{domain}/versions/{version}")
def version(request: Request, token: Operator, domain: str, version: int) -> HTMLResponse:
    _require_domain(token, domain)
    shown = _read(lambda conn: library_admin.show(conn, domain, version=version))
    return _page(request, token, "version.html", domain=domain, shown=shown)


@router.get("/domains/{domain}/diff")
def diff(request: Request, token: Operator, domain: str, a: int, b: int) -> HTMLResponse:
    _require_domain(token, domain)
    changes = _read(lambda conn: library_admin.diff(conn, domain, a, b))
    return _page(request, token, "diff.html", domain=domain, changes=changes)


@router.post("/domains/{domain}/{action}")
def act(
    token: Operator,
    domain: str,
    action: str,
    reason: Reason,
    version: Annotated[str, Form()] = "",
) -> Response:
    """One operator action from its form; back to the library page with what happened."""
    _require_domain(token, domain)
    if action not in ACTIONS:
        raise RefusedError(404, f"there is no action {action!r}; the actions are {', '.join(ACTIONS)}")
    if not reason.strip():
        return _back(f"/ui/domains/{domain}", error=f"give a reason to {action}: it goes to the audit log")
    actor = f"token:{token.name}"
    number = int(version) if version.strip().isdigit() else None
    if version.strip() and number is None:
        return _back(f"/ui/domains/{domain}", error=f"the version must be a whole number, not {version!r}")

    def run(conn: psycopg.Connection[Any]) -> str:
        if action in ("rollback", "promote"):
            if number is None:
                raise OperatorError(f"choose the version to {action} to.")
            move = library_admin.rollback if action == "rollback" else library_admin.promote
            done = move(conn, domain, number, reason=reason, actor=actor)
            return f"production of {domain} moved from version {done['from']} to {done['to']} ({action})"
        if action == "pin":
            pinned = library_admin.pin(conn, domain, number, reason=reason, actor=actor)
            return f"production of {domain} is pinned at version {pinned['pinned']}"
        if action == "unpin":
            library_admin.unpin(conn, domain, reason=reason, actor=actor)
            return f"production of {domain} is no longer pinned"
        library_admin.set_frozen(conn, domain, action == "freeze", reason=reason, actor=actor)
        return f"learning on {domain} is {'frozen' if action == 'freeze' else 'running again'}"

    try:
        with resources.pool().connection() as conn:
            notice = run(conn)
    except OperatorError as error:  # NotFoundError too: the sentence says what is missing
        return _back(f"/ui/domains/{domain}", error=str(error))
    log.info("operator action from the dashboard", domain=domain, action=action)
    return _back(f"/ui/domains/{domain}", notice=notice)


@router.get("/domains/{domain}/groups")
def groups(request: Request, token: Operator, domain: str) -> HTMLResponse:
    _require_domain(token, domain)
    from grpod.workers.grouping_store import list_groups, prepare

    def read(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        library_admin.show(conn, domain)  # an unknown domain is a 404 here
        prepare(conn)
        return {"groups": list_groups(conn, domain, 100), "distillations": dashboard_store.distillations(conn, domain)}

    return _page(request, token, "groups.html", domain=domain, **_read(read))


@router.get("/domains/{domain}/distillations/{distillation_id}")
def distillation(request: Request, token: Operator, domain: str, distillation_id: int) -> HTMLResponse:
    _require_domain(token, domain)
    found = _read(lambda conn: dashboard_store.distillation(conn, domain, distillation_id))
    if found is None:
        raise RefusedError(404, f"domain {domain!r} has no distillation {distillation_id}")
    return _page(request, token, "distillation.html", domain=domain, distillation=found)


@router.get("/traces/{trace_id}")
def trace(request: Request, token: Operator, trace_id: str) -> HTMLResponse:
    found = _read(lambda conn: dashboard_store.trace(conn, trace_id))
    if found is None:
        raise RefusedError(404, f"there is no trace {trace_id!r} (retention may have removed it)")
    _require_domain(token, found["domain"])
    return _page(request, token, "trace.html", trace=found)


@router.get("/rejected")
def rejected_events(
    request: Request, token: Operator, reason: str | None = None, domain: str | None = None
) -> HTMLResponse:
    if domain:
        _require_domain(token, domain)
    domains = [domain] if domain else token.domains
    rows = _read(lambda conn: rejected.list_rejected(conn, reason or None, 100, domains))
    return _page(request, token, "rejected.html", rows=rows, reason=reason or "", domain=domain or "")


@router.post("/rejected/{rejected_id}/replay")
def replay(token: Operator, rejected_id: int) -> Response:
    """Replay one rejected event: one that named a domain needs operate on it, one that named none
    a token of every domain."""
    with resources.pool().connection() as conn:
        exists, domain = dashboard_store.rejected_domain(conn, rejected_id)
        if not exists:
            return _back("/ui/rejected", error=f"there is no rejected event {rejected_id}")
        if not access.permits(token, "operate", domain) or (domain is None and token.domains is not None):
            raise RefusedError(403, f"token {token.name!r} may not replay rejected event {rejected_id}")
        try:
            result = rejected.replay(conn, rejected_id, resources.settings())
        except OperatorError as error:
            return _back("/ui/rejected", error=str(error))
    if result.outcome == "rejected":
        return _back("/ui/rejected", error=f"event {rejected_id} was rejected again: {result.reason}")
    return _back("/ui/rejected", notice=f"event {rejected_id} replayed: {result.outcome}")
