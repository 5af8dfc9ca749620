"""The ``msvlm-node`` command (also ``python -m node``).

Every option has an environment-variable mirror; an option given on the command
line is applied by setting that variable, so the settings object has exactly
one way of reading overrides. Errors the node raises on purpose are handled
here, in one place: the cause is printed and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

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

    serve = sub.add_parser("serve", help="run the DICOM receiver (and, later, scheduler and worker)")
    serve.add_argument("--host", help=f"listen address (env {ENV_MIRRORS['host']})")
    serve.add_argument("--port", type=int, help=f"DICOM port (env {ENV_MIRRORS['port']})")
    serve.add_argument("--ae-title", help=f"our AE title (env {ENV_MIRRORS['ae_title']})")
    serve.add_argument("--receivers", type=int, help=f"receiver processes (env {ENV_MIRRORS['receivers']})")
    serve.add_argument("--storage", help=f"storage root (env {ENV_MIRRORS['storage']})")
    serve.set_defaults(handler=_cmd_serve)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply every migration").set_defaults(handler=_cmd_db_upgrade)
    db.add_parser("check", help="fail unless the schema is current").set_defaults(handler=_cmd_db_check)

    phantom = sub.add_parser(
        "phantom", help="write synthetic phantom studies (see its --help)", add_help=False
    )
    phantom.add_argument("phantom_args", nargs=argparse.REMAINDER)
    phantom.set_defaults(handler=_cmd_phantom)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for dest, variable in ENV_MIRRORS.items():
        value = getattr(args, dest, None)
        if value is not None:
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
