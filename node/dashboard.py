"""The dashboard: server-rendered pages over the same ledger queries as the API.

No front-end build, no JavaScript: Jinja2 templates with a little inline CSS and
a ``<meta http-equiv="refresh">`` that ``?refresh=0`` switches off. Pages go
through the same authentication middleware and the same audit as the API, and
list pages never show patient names (only the study and job pages do).

Browsers cannot send a bearer header, so ``/login`` trades a token for an
HttpOnly, SameSite=Strict cookie that pages accept (never ``/api``). The job
page's Retry and Cancel buttons are plain form posts: the cookie authorises
them only when the browser's ``Origin`` header names this very host (checked
in ``node.api``), so another site, even a sibling on the same domain, cannot
forge one. They are audited and recorded as job events like the API's.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node import admin
from node.admin import NotFound
from node.api_ledger import cancel_job, parse_since
from node.audit import TOKEN_COOKIE, Authenticator, Requester, audited, requester
from node.errors import NodeError
from node.jobs import JobState
from node.schema import Delivery, Job, Study

if TYPE_CHECKING:
    from node.api import ApiContext

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
COOKIE_MAX_AGE = 12 * 3600
#: a job in one of these can be cancelled; in any other it can be retried
UNFINISHED = frozenset({JobState.PENDING.value, JobState.RUNNING.value})
#: what the job page says after a redirect from an action (fixed text, nothing reflected)
DONE_NOTICES = {
    "retried": "Sent back to pending with a fresh attempt budget.",
    "cancelled": "Cancelled. A worker still running it drops its result.",
}


class JobAction(Protocol):
    def __call__(self, session: Session, job_id: int, *, actor: str) -> JobState: ...


def _seconds(value: float | None) -> str:
    """Durations for people: 0.42 s, 12.3 s, 4 min 05 s, 2 h 03 min."""
    if value is None:
        return "—"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60):02d} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} min"


def _when(value: str | None) -> str:
    return value.replace("T", " ").replace("+00:00", "Z") if value else "—"


def _short(uid: str | None, keep: int = 14) -> str:
    return "—" if not uid else uid if len(uid) <= keep + 1 else "…" + uid[-keep:]


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(seconds=_seconds, when=_when, short=_short, region=admin.region_text)
    return env


def timeline(
    last_image: datetime | None,
    settled: datetime | None,
    started: datetime | None,
    finished: datetime | None,
    delivered: datetime | None,
) -> list[dict[str, Any]]:
    """last image -> settled -> started -> finished -> delivered, with the time each step took.

    Works on the ledger's datetimes, not the second-rounded strings of show_job,
    so sub-second steps (settle after release, a fast SR) read correctly.
    """
    steps = [
        ("last image", last_image),
        ("settled (job created)", settled),
        ("started", started),
        ("finished", finished),
        ("delivered", delivered),
    ]
    rows: list[dict[str, Any]] = []
    previous: datetime | None = None
    for name, moment in steps:
        rows.append(
            {
                "name": name,
                "at": moment.isoformat(timespec="seconds") if moment else None,
                "step": (moment - previous).total_seconds() if moment and previous else None,
                "total": (moment - last_image).total_seconds() if moment and last_image else None,
            }
        )
        previous = moment or previous
    return rows


def dashboard_router(ctx: ApiContext) -> APIRouter:
    """The HTML pages; excluded from the OpenAPI document (they are not an API)."""
    router = APIRouter(include_in_schema=False)
    env = environment()
    default_refresh = ctx.settings.api.dashboard_refresh_seconds

    def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        refresh = _int(request.query_params.get("refresh"), default_refresh)
        toggle = dict(request.query_params)
        toggle["refresh"] = "0" if refresh else str(default_refresh or 10)
        html = env.get_template(template).render(
            refresh=refresh,
            toggle_url=f"{request.url.path}?{urlencode(toggle)}",
            actor=request.state.actor,
            states=[s.value for s in JobState],
            **values,
        )
        return HTMLResponse(html, status_code=status)

    @router.get("/", response_class=HTMLResponse)
    @router.get("/jobs", response_class=HTMLResponse)
    def jobs_page(request: Request, state: str | None = None, since: str | None = None) -> HTMLResponse:
        chosen = state if state in {s.value for s in JobState} else None
        with audited(ctx.factory, requester(request)) as session:
            jobs = admin.list_jobs(session, state=chosen, since=parse_since(since), limit=200)
            accessions = _accessions(session, {j["study_instance_uid"] for j in jobs})
        return page(
            request, "jobs.jinja2", jobs=jobs, accessions=accessions, state=chosen or "", since=since or ""
        )

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: int) -> HTMLResponse:
        notice = DONE_NOTICES.get(request.query_params.get("done", ""))
        return job_view(request, requester(request), job_id, notice=notice)

    @router.post("/jobs/{job_id}/retry", response_class=HTMLResponse)
    def retry(request: Request, job_id: int) -> Response:
        return act(request, job_id, "retried", admin.retry_job)

    @router.post("/jobs/{job_id}/cancel", response_class=HTMLResponse)
    def cancel(request: Request, job_id: int) -> Response:
        return act(request, job_id, "cancelled", cancel_job)

    def act(request: Request, job_id: int, done: str, action: JobAction) -> Response:
        """Apply a job action with its audit entry; back to the job page, or why it was refused."""
        who = requester(request)
        try:
            with audited(ctx.factory, who) as session:
                previous = action(session, job_id, actor=f"dashboard:{who.actor}")
        except NotFound:
            raise
        except NodeError as exc:
            # the refusal has its own audit entry (409); the page shown with it is a read of the job
            read = replace(who, method="GET", path=f"/jobs/{job_id}")
            return job_view(request, read, job_id, error=str(exc), status=409)
        log.info(
            f"dashboard.job_{done}", extra={"job": job_id, "actor": who.actor, "from_state": previous.value}
        )
        return RedirectResponse(f"/jobs/{job_id}?done={done}", status_code=303)

    def job_view(
        request: Request,
        who: Requester,
        job_id: int,
        *,
        notice: str | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        with audited(ctx.factory, who) as session:
            job = admin.show_job(session, job_id)
            row = session.get(Job, job_id)
            delivered = session.execute(
                select(func.min(Delivery.finished_at)).where(
                    Delivery.job_id == job_id, Delivery.state == "succeeded"
                )
            ).scalar_one()
            steps = (
                timeline(row.last_instance_at, row.created_at, row.started_at, row.finished_at, delivered)
                if row
                else []
            )
            study = session.get(Study, job["study_instance_uid"])
            patient = (
                None
                if study is None
                else {
                    "name": study.patient_name,
                    "id": study.patient_id,
                    "accession": study.accession_number,
                    "date": study.study_date,
                    "description": study.study_description,
                }
            )
        return page(
            request,
            "job.jinja2",
            status,
            job=job,
            patient=patient,
            timeline=steps,
            notice=notice,
            action_error=error,
            retryable=job["state"] not in UNFINISHED,
        )

    @router.get("/studies", response_class=HTMLResponse)
    def studies_page(request: Request, since: str | None = None) -> HTMLResponse:
        with audited(ctx.factory, requester(request)) as session:
            studies = admin.list_studies(session, since=parse_since(since), limit=200)
        return page(request, "studies.jinja2", studies=studies, since=since or "")

    @router.get("/studies/{study_uid}", response_class=HTMLResponse)
    def study_page(request: Request, study_uid: str) -> HTMLResponse:
        with audited(ctx.factory, requester(request)) as session:
            study = admin.show_study(session, study_uid)
        return page(request, "study.jinja2", study=study)

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return HTMLResponse(env.get_template("login.jinja2").render(error=None))

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        actor = Authenticator(ctx.settings.api.tokens).actor_for_token(token)
        if actor is None:
            log.warning("api.login_failed", extra={"client": request.state.client})
            return HTMLResponse(
                env.get_template("login.jinja2").render(error="That token is not valid."), status_code=401
            )
        log.info("api.login", extra={"actor": actor, "client": request.state.client})
        response = RedirectResponse("/jobs", status_code=303)
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            max_age=COOKIE_MAX_AGE,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @router.get("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(TOKEN_COOKIE, path="/")
        return response

    return router


def _int(value: str | None, default: int) -> int:
    try:
        return max(0, min(3600, int(value))) if value is not None else default
    except ValueError:
        return default


def _accessions(session: Session, uids: set[str]) -> dict[str, str | None]:
    """Accession numbers for the jobs table (no patient names on list pages)."""
    if not uids:
        return {}
    rows = session.execute(
        select(Study.study_instance_uid, Study.accession_number).where(Study.study_instance_uid.in_(uids))
    )
    return {uid: accession for uid, accession in rows}
