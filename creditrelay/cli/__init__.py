"""``creditrelay``: the one command line. Each module of the project has its subcommands here:
``server`` (migrate, serve), ``accounts`` (users, keys, credits, replay), ``cron`` (poll, reconcile,
cleanup, credit API clients), ``orders`` (order list), ``gateway`` (check), ``outbox`` (send, relay, outbox).

Building the parser imports nothing heavy: each command imports what it uses when it runs, so a cron job
or an account command starts quickly. Account commands print one JSON object on stdout; errors are one
line on stderr (exit 2 for a mistake in the command line or the settings, 1 for what cannot be done).
"""

import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from creditrelay import __version__
from creditrelay.cli import accounts, cron, gateway, orders, outbox, server
from creditrelay.cli.base import Handler, Parser, fail
from creditrelay.schema.errors import CreditRelayError, DatabaseUnavailable, SettingsError


def build_parser() -> Parser:
    parser = Parser(
        prog="creditrelay",
        description="Charge prepaid credits from an AI gateway's signed usage events, exactly once.",
        epilog="Settings come from the environment or ./.env (docs/configuration.md); every command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"creditrelay {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=Parser)
    for module in (server, accounts, orders, cron, gateway, outbox):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from creditrelay.receiver.logs import configure_logging
        from creditrelay.settings import load_settings

        settings = load_settings()
        configure_logging(settings.log_level)  # JSON lines on stderr; stdout is the answer
        handler: Handler = args.handler
        return handler(args, settings)
    except SettingsError as error:
        return fail(str(error), 2)
    except DatabaseUnavailable as error:
        return fail(f"database unavailable: {error}")
    except DBAPIError as error:
        from creditrelay.schema.transactions import is_unavailable

        said = str(error.orig).splitlines()[0][:300]
        if is_unavailable(error):  # the database does not answer (down, wrong host or credentials)
            return fail(f"database unavailable: {said}")
        return fail(f"the database refused a statement of creditrelay's (a bug: please report it): {said}")
    except CreditRelayError as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
