"""The admin HTTP API, the dashboard and ``/metrics``: one FastAPI app over the ledger.

It only reads and writes the database (like every stage), so it can run in any
process of the node, or several. Authentication is one ASGI middleware in front
of everything: loopback clients are trusted (a node on a laptop needs no
setup), every other client needs ``Authorization: Bearer <token>``. Trusting
loopback is what browsers make dangerous, so a loopback request must also name
a loopback host (no DNS rebinding) and a state change must not come from a
foreign page (``Origin``). Every request that reads patient data or changes
state is audited (:mod:`node.audit`).

``serve`` runs it with :func:`run_api` in a thread; tests use :func:`start_api`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from node import admin
from node.admin import NotFound
from node.api_ledger import cancel_job, list_associations, list_deliveries, parse_since, readiness
from node.api_models import (
    AssociationOut,
    DeliveryOut,
    ErrorOut,
    Health,
    JobAction,
    JobDetail,
    JobSummary,
    Ready,
    StudyDetail,
    StudySummary,
)
from node.audit import (
    LOOPBACK_ACTOR,
    LOOPBACK_NAMES,
    TOKEN_COOKIE,
    Authenticator,
    audited,
    is_loopback,
    requester,
)
from node.config import ApiSection, Settings
from node.dashboard import dashboard_router
from node.db import head_revision
from node.errors import NodeError
from node.jobs import JobState
from node.metrics import ProcessStatsProvider, build_registry

log = logging.getLogger(__name__)

#: answered without authentication: probes of load balancers and orchestrators
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/login"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: what a browser gets instead of JSON (the reason is one of our fixed strings)
REFUSED_PAGE = (
    "<!doctype html><title>msvlm-node</title><p>Not signed in ({reason}).</p>"
    '<p><a href="/login">Sign in with an API token</a></p>'
)
ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "no or invalid token"},
    404: {"model": ErrorOut, "description": "no such job or study"},
    409: {"model": ErrorOut, "description": "not allowed in the job's current state"},
}


@dataclass
class ApiContext:
    """What the routes need; built once per app."""

    settings: Settings
    factory: sessionmaker[Session]
    engine: Engine
    head: str
    registry: CollectorRegistry
    model_ready: Callable[[], bool] | None = None


class AuthMiddleware:
    """Decides who is asking before any route runs; refuses with 401/403 otherwise."""

    def __init__(self, app: ASGIApp, *, api: ApiSection) -> None:
        self.app = app
        self.api = api
        self.auth = Authenticator(api.tokens)
        self.loopback_hosts = LOOPBACK_NAMES | {api.host, socket.gethostname()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        client = scope["client"][0] if scope.get("client") else None
        state = scope.setdefault("state", {})
        state["client"] = client
        if path in PUBLIC_PATHS or (path == "/metrics" and not self.api.metrics_require_token):
            state["actor"] = "anonymous"
            await self.app(scope, receive, send)
            return
        actor, status, reason = self.identify(path, method, Headers(scope=scope), client)
        if actor is None:
            log.warning(
                "api.refused",
                extra={"client": client, "method": method, "path": path, "status": status, "reason": reason},
            )
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            response: Response = JSONResponse({"detail": reason}, status_code=status, headers=headers)
            if not path.startswith("/api/") and "text/html" in Headers(scope=scope).get("accept", ""):
                response = HTMLResponse(
                    REFUSED_PAGE.format(reason=reason), status_code=status, headers=headers
                )
            await response(scope, receive, send)
            return
        state["actor"] = actor
        await self.app(scope, receive, send)

    def identify(
        self, path: str, method: str, headers: Headers, client: str | None
    ) -> tuple[str | None, int, str]:
        """``(actor, 200, "")`` or ``(None, status, why)``; the token itself never leaves here."""
        token = Authenticator.bearer(headers)
        if token is not None:  # a header is meant: a wrong one is refused, never ignored
            actor = self.auth.actor_for_token(token)
            return (actor, 200, "") if actor else (None, 401, "invalid token")
        changes = method not in SAFE_METHODS
        origin = headers.get("origin")
        cookie = _cookie(headers, TOKEN_COOKIE) if not path.startswith("/api/") else None
        if cookie is not None and (actor := self.auth.actor_for_token(cookie)) is not None:
            # a page's form may change state only when the browser says it comes from this origin
            if changes and not _same_origin(origin, headers):
                return None, 403, "cross-origin state change refused"
            return actor, 200, ""
        if not (self.api.trust_loopback and is_loopback(client)):
            return None, 401, "invalid token" if cookie else "a bearer token is required"
        host = _hostname(headers.get("host", ""))
        if host not in self.loopback_hosts:
            return None, 403, "loopback requests must name a loopback host"
        if changes and origin is not None and not _same_origin(origin, headers):
            return None, 403, "cross-origin state change refused"
        return LOOPBACK_ACTOR, 200, ""


def _same_origin(origin: str | None, headers: Headers) -> bool:
    """The ``Origin`` a browser sent names the host it sent the request to."""
    host = headers.get("host")
    return origin is not None and origin in (f"http://{host}", f"https://{host}")


def _hostname(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _cookie(headers: Headers, name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


Limit = Annotated[int, Query(ge=1, le=1000)]


def create_app(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    model_ready: Callable[[], bool] | None = None,
    process_stats: ProcessStatsProvider | None = None,
) -> FastAPI:
    """The whole HTTP surface. ``model_ready`` and ``process_stats`` come from a co-located worker."""
    engine = factory.kw["bind"]
    ctx = ApiContext(
        settings=settings,
        factory=factory,
        engine=engine,
        head=head_revision(engine),
        registry=build_registry(factory, process_stats),
        model_ready=model_ready,
    )
    app = FastAPI(
        title="msvlm-node admin API",
        version="1",
        docs_url="/docs",
        redoc_url=None,
        description="Jobs, studies, deliveries and associations from the node's SQL ledger.",
    )
    app.add_middleware(AuthMiddleware, api=settings.api)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(NodeError)
    async def _conflict(request: Request, exc: NodeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.get("/healthz", response_model=Health, tags=["probes"])
    def healthz() -> Health:
        """Alive: the process answers. Needs no token and touches nothing."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Ready, tags=["probes"], responses={503: {"model": Ready}})
    def readyz() -> JSONResponse:
        """Ready for work: database reachable at the current schema, model present, storage writable, disk
        below the watermark. 503 lists the failing checks."""
        checks = readiness(ctx.settings, ctx.engine, ctx.head, ctx.model_ready)
        ready = all(check.ok for check in checks)
        if not ready:
            log.warning("api.not_ready", extra={"failing": ",".join(c.name for c in checks if not c.ok)})
        body = Ready(ready=ready, checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/api/jobs", response_model=list[JobSummary], tags=["jobs"], responses=ERRORS)
    def jobs(
        request: Request,
        state: JobState | None = None,
        since: str | None = None,
        study: str | None = None,
        limit: Limit = 100,
    ) -> list[dict[str, object]]:
        """Jobs, newest first. ``since``: ``24h``, ``30m``, ``7d`` or an ISO date/time."""
        with audited(ctx.factory, requester(request)) as session:
            return admin.list_jobs(
                session,
                state=state.value if state else None,
                since=parse_since(since),
                study=study,
                limit=limit,
            )

    @app.get("/api/jobs/{job_id}", response_model=JobDetail, tags=["jobs"], responses=ERRORS)
    def job(request: Request, job_id: int) -> dict[str, object]:
        """One job: manifest (views, exclusions and why), timings, error, report, deliveries, events."""
        with audited(ctx.factory, requester(request)) as session:
            return admin.show_job(session, job_id)

    @app.post("/api/jobs/{job_id}/retry", response_model=JobAction, tags=["jobs"], responses=ERRORS)
    def retry(request: Request, job_id: int) -> JobAction:
        """Send a succeeded, failed or cancelled job back to pending with a fresh attempt budget."""
        who = requester(request)
        actor = f"api:{who.actor}"
        with audited(ctx.factory, who) as session:
            previous = admin.retry_job(session, job_id, actor=actor)
        log.info("api.job_retried", extra={"job": job_id, "actor": who.actor, "from_state": previous.value})
        return JobAction(id=job_id, state=JobState.PENDING.value, previous_state=previous.value, actor=actor)

    @app.post("/api/jobs/{job_id}/cancel", response_model=JobAction, tags=["jobs"], responses=ERRORS)
    def cancel(request: Request, job_id: int) -> JobAction:
        """Cancel a pending or running job (a running worker drops its result)."""
        who = requester(request)
        actor = f"api:{who.actor}"
        with audited(ctx.factory, who) as session:
            previous = cancel_job(session, job_id, actor=actor)
        log.info("api.job_cancelled", extra={"job": job_id, "actor": who.actor, "from_state": previous.value})
        return JobAction(
            id=job_id, state=JobState.CANCELLED.value, previous_state=previous.value, actor=actor
        )

    @app.get("/api/studies", response_model=list[StudySummary], tags=["studies"], responses=ERRORS)
    def studies(request: Request, since: str | None = None, limit: Limit = 100) -> list[dict[str, object]]:
        """Studies by last arrival, newest first, with their latest job's state."""
        with audited(ctx.factory, requester(request)) as session:
            return admin.list_studies(session, since=parse_since(since), limit=limit)

    @app.get("/api/studies/{study_uid}", response_model=StudyDetail, tags=["studies"], responses=ERRORS)
    def study(request: Request, study_uid: str) -> dict[str, object]:
        """One study with patient identity, series and jobs."""
        with audited(ctx.factory, requester(request)) as session:
            return admin.show_study(session, study_uid)

    @app.get("/api/deliveries", response_model=list[DeliveryOut], tags=["deliveries"], responses=ERRORS)
    def deliveries(
        request: Request, state: str | None = None, destination: str | None = None, limit: Limit = 100
    ) -> list[dict[str, object]]:
        """Delivery attempts, newest first (state: scheduled, sending, succeeded, failed)."""
        with audited(ctx.factory, requester(request)) as session:
            return list_deliveries(session, state=state, destination=destination, limit=limit)

    @app.get(
        "/api/associations",
        response_model=list[AssociationOut],
        tags=["associations"],
        responses={401: ERRORS[401]},
    )
    def associations(outcome: str | None = None, limit: Limit = 100) -> list[dict[str, object]]:
        """DICOM associations, newest first (outcome: open, released, aborted, rejected). Not audited: no
        patient data."""
        with ctx.factory() as session:
            return list_associations(session, outcome=outcome, limit=limit)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(dashboard_router(ctx))
    return app


@dataclass
class ApiHandle:
    """A running API server (from :func:`start_api`); ``stop()`` shuts it down."""

    server: uvicorn.Server
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.server.config.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout)


def _server(
    settings: Settings,
    factory: sessionmaker[Session],
    model_ready: Callable[[], bool] | None,
    process_stats: ProcessStatsProvider | None,
) -> uvicorn.Server:
    app = create_app(settings, factory, model_ready=model_ready, process_stats=process_stats)
    # log_config=None: keep the node's logging; access_log off: the audit table is the access record
    config = uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    return uvicorn.Server(config)


def run_api(
    settings: Settings,
    factory: sessionmaker[Session],
    stop: threading.Event,
    *,
    model_ready: Callable[[], bool] | None = None,
    process_stats: ProcessStatsProvider | None = None,
) -> None:
    """Serve the API until ``stop`` is set (for a thread of ``serve``); returns once it is down."""
    server = _server(settings, factory, model_ready, process_stats)

    def watch() -> None:
        stop.wait()
        server.should_exit = True

    threading.Thread(target=watch, name="api-stop", daemon=True).start()
    log.info("api.starting", extra={"host": settings.api.host, "port": settings.api.port})
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind; the node keeps its other roles
        log.error("api.failed", extra={"host": settings.api.host, "port": settings.api.port})
        return
    log.info("api.stopped")


def start_api(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    model_ready: Callable[[], bool] | None = None,
    process_stats: ProcessStatsProvider | None = None,
    timeout: float = 10.0,
) -> ApiHandle:
    """Start the API in a thread and wait until it listens (``api.port = 0`` picks a free port)."""
    server = _server(settings, factory, model_ready, process_stats)
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise NodeError(f"api: could not listen on {settings.api.host}:{settings.api.port}")
        time.sleep(0.02)
    handle = ApiHandle(server=server, thread=thread)
    log.info("api.listening", extra={"url": handle.url})
    return handle
