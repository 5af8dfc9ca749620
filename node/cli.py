"""The ``msvlm-node`` command (also ``python -m node``).

Every option has an environment-variable mirror; an option given on the command
line is applied by setting that variable, so the settings object has exactly
one way of reading overrides. Errors the node raises on purpose are handled
here, in one place: the cause is printed and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from node.config import CONFIG_ENV, Settings, load_settings
from node.errors import NodeError
from node.logs import configure_logging

Command = Callable[[argparse.Namespace, Settings], int]

#: option dest -> environment variable it mirrors
ENV_MIRRORS = {
    "host": "MSVLM_NODE_NODE__HOST",
    "port": "MSVLM_NODE_NODE__PORT",
    "ae_title": "MSVLM_NODE_NODE__AE_TITLE",
    "receivers": "MSVLM_NODE_NODE__RECEIVERS",
    "database_url": "MSVLM_NODE_DATABASE__URL",
    "storage": "MSVLM_NODE_STORAGE__PATH",
    "log_level": "MSVLM_NODE_LOGGING__LEVEL",
    "roles": "MSVLM_NODE_NODE__ROLES",
}


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from node.serve import serve

    return serve(settings)


def _cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from node.db import create_db_engine, upgrade

    engine = create_db_engine(settings.database.url)
    revision = upgrade(engine)
    print(f"database is at revision {revision}")
    return 0


def _cmd_db_check(args: argparse.Namespace, settings: Settings) -> int:
    from node.db import create_db_engine, ensure_schema

    ensure_schema(create_db_engine(settings.database.url), create_if_empty=False)
    print("database schema is current")
    return 0


def _session(settings: Settings):  # type: ignore[no-untyped-def]
    from node.db import create_db_engine, ensure_schema, session_factory

    engine = create_db_engine(settings.database.url)
    ensure_schema(engine, create_if_empty=False)
    return session_factory(engine)()


def _print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("(none)")
        return
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [min(64, max(len(c), *(len(r[i]) for r in cells))) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v[:w].ljust(w) for v, w in zip(r, widths, strict=True)))


def _cmd_jobs_list(args: argparse.Namespace, settings: Settings) -> int:
    from node.admin import list_jobs, parse_since

    with _session(settings) as session:
        rows = list_jobs(
            session,
            state=args.state,
            since=parse_since(args.since) if args.since else None,
            study=args.study,
            limit=args.limit,
        )
    _print_rows(
        rows,
        ["id", "state", "created_at", "views", "attempts", "signal", "study_instance_uid", "error"],
        args.json,
    )
    return 0


def _cmd_jobs_show(args: argparse.Namespace, settings: Settings) -> int:
    from node.admin import finding_line, show_job

    with _session(settings) as session:
        job = show_job(session, args.job_id)
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    print(
        f"job {job['id']}: {job['state']}  (attempts {job['attempts']}/{job['max_attempts']}, "
        f"worker {job['worker'] or '-'}, settled by {job['signal']})"
    )
    print(f"study    {job['study_instance_uid']}")
    print(
        f"model    {job['model']['name']} {job['model']['version']} ({job['model']['weights_sha256'][:12]})"
    )
    if job["error"]:
        print(f"error    {job['error']}")
    timings = job["timings"]
    print(
        "timings  "
        + ", ".join(
            f"{k.removesuffix('_seconds')} {v:.2f}s"
            for k, v in timings.items()
            if k.endswith("_seconds") and v is not None
        )
    )
    print("views:")
    for view in job["manifest"]["views"]:
        print(f"  {view['key']:<26} {view['slice_count']:>4} slices  {view['series_instance_uid']}")
    for excluded in job["manifest"]["excluded"]:
        print(f"  excluded {excluded['reason_code']:<17} {excluded['reason']}")
    if job["result"]:
        print("report:\n  " + job["result"]["report"].replace("\n", "\n  "))
        print("impression:\n  " + job["result"]["impression"])
        print("findings:")
        for finding in job["result"]["findings"]:
            print(f"  {finding_line(finding)}")
    for d in job["deliveries"]:
        print(
            f"delivery {d['destination']} attempt {d['attempt']}: {d['state']} {d['status'] or ''} "
            f"{d['error'] or ''}".rstrip()
        )
    return 0


def _cmd_jobs_retry(args: argparse.Namespace, settings: Settings) -> int:
    from node.admin import retry_job

    with _session(settings) as session, session.begin():
        retry_job(session, args.job_id, actor=f"cli:{getpass.getuser()}")
    print(f"job {args.job_id} is pending again")
    return 0


def _cmd_studies_list(args: argparse.Namespace, settings: Settings) -> int:
    from node.admin import list_studies, parse_since

    with _session(settings) as session:
        rows = list_studies(session, since=parse_since(args.since) if args.since else None, limit=args.limit)
    _print_rows(
        rows,
        [
            "study_instance_uid",
            "accession_number",
            "instances",
            "last_received_at",
            "latest_job",
            "job_state",
        ],
        args.json,
    )
    return 0


def _cmd_studies_show(args: argparse.Namespace, settings: Settings) -> int:
    from node.admin import show_study

    with _session(settings) as session:
        study = show_study(session, args.study_uid)
    if args.json:
        print(json.dumps(study, indent=2))
        return 0
    print(
        f"study {study['study_instance_uid']}  accession {study['accession_number'] or '-'}  "
        f"date {study['study_date'] or '-'}  settled {study['settled_at'] or 'no'}"
    )
    _print_rows(
        study["series"],
        ["number", "modality", "description", "instances", "own_output", "series_instance_uid"],
        False,
    )
    print("jobs:")
    _print_rows(study["jobs"], ["id", "state", "created_at", "views", "error"], False)
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from node.serve import serve

    return serve(
        settings.model_copy(update={"node": settings.node.model_copy(update={"roles": ("worker",)})})
    )


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from node.demo import run_demo

    return run_demo(Path(args.workdir) if args.workdir else None)


def _cmd_phantom(args: argparse.Namespace, settings: Settings) -> int:
    from models.phantom.cli import main as phantom_main

    return phantom_main(list(args.phantom_args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msvlm-node", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help=f"TOML config file (env {CONFIG_ENV})")
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help=f"(env {ENV_MIRRORS['log_level']})"
    )
    parser.add_argument("--database-url", help=f"(env {ENV_MIRRORS['database_url']})")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="run the node: receiver, scheduler (settle, reap, deliver) and a worker"
    )
    serve.add_argument("--host", help=f"listen address (env {ENV_MIRRORS['host']})")
    serve.add_argument("--port", type=int, help=f"DICOM port (env {ENV_MIRRORS['port']})")
    serve.add_argument("--ae-title", help=f"our AE title (env {ENV_MIRRORS['ae_title']})")
    serve.add_argument("--receivers", type=int, help=f"receiver processes (env {ENV_MIRRORS['receivers']})")
    serve.add_argument("--storage", help=f"storage root (env {ENV_MIRRORS['storage']})")
    serve.add_argument(
        "--roles", help=f"comma-separated: receiver,scheduler,worker (env {ENV_MIRRORS['roles']})"
    )
    serve.set_defaults(handler=_cmd_serve)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply every migration").set_defaults(handler=_cmd_db_upgrade)
    db.add_parser("check", help="fail unless the schema is current").set_defaults(handler=_cmd_db_check)

    sub.add_parser(
        "worker", help="run an inference worker only (claims jobs from the shared database)"
    ).set_defaults(handler=_cmd_worker)

    jobs = sub.add_parser("jobs", help="the job ledger").add_subparsers(dest="jobs_command", required=True)
    jobs_list = jobs.add_parser("list", help="list jobs, newest first")
    jobs_list.add_argument("--state", help="pending, running, succeeded, failed or cancelled")
    jobs_list.add_argument("--since", help="e.g. 24h, 30m, 7d or an ISO date")
    jobs_list.add_argument("--study", help="a Study Instance UID")
    jobs_list.add_argument("--limit", type=int, default=100)
    jobs_list.add_argument("--json", action="store_true")
    jobs_list.set_defaults(handler=_cmd_jobs_list)
    jobs_show = jobs.add_parser("show", help="one job: manifest, timings, error, report, deliveries")
    jobs_show.add_argument("job_id", type=int)
    jobs_show.add_argument("--json", action="store_true")
    jobs_show.set_defaults(handler=_cmd_jobs_show)
    jobs_retry = jobs.add_parser("retry", help="run a finished or failed job again")
    jobs_retry.add_argument("job_id", type=int)
    jobs_retry.set_defaults(handler=_cmd_jobs_retry)

    studies = sub.add_parser("studies", help="received studies").add_subparsers(
        dest="studies_command", required=True
    )
    studies_list = studies.add_parser("list", help="list studies, most recent first")
    studies_list.add_argument("--since", help="e.g. 24h, 7d or an ISO date")
    studies_list.add_argument("--limit", type=int, default=100)
    studies_list.add_argument("--json", action="store_true")
    studies_list.set_defaults(handler=_cmd_studies_list)
    studies_show = studies.add_parser("show", help="one study: series and jobs")
    studies_show.add_argument("study_uid")
    studies_show.add_argument("--json", action="store_true")
    studies_show.set_defaults(handler=_cmd_studies_show)

    demo = sub.add_parser("demo", help="the whole loop on loopback: phantom study -> node -> SR, printed")
    demo.add_argument("--workdir", help="keep the demo's files here (default: a new temporary folder)")
    demo.set_defaults(handler=_cmd_demo)

    phantom = sub.add_parser(
        "phantom", help="write synthetic phantom studies (see its --help)", add_help=False
    )
    phantom.add_argument("phantom_args", nargs=argparse.REMAINDER)
    phantom.set_defaults(handler=_cmd_phantom)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["phantom"]:  # its own parser, its own --help; it needs no node settings
        from models.phantom.cli import main as phantom_main

        return phantom_main(arguments[1:])
    args = build_parser().parse_args(arguments)
    for dest, variable in ENV_MIRRORS.items():
        value = getattr(args, dest, None)
        if value is not None:
            if dest == "roles":  # a list key: pydantic-settings reads JSON from the environment
                value = json.dumps([r.strip() for r in str(value).split(",") if r.strip()])
            os.environ[variable] = str(value)
    if args.config:
        os.environ[CONFIG_ENV] = args.config
    try:
        settings = load_settings()
        configure_logging(settings.logging.level, settings.logging.format)
        handler: Command = args.handler
        return handler(args, settings)
    except NodeError as exc:
        print(f"msvlm-node: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
