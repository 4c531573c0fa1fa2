"""``python -m devkit COMMAND``: the local development kit's command line.

Each command is one small function below that adds its sub-parser and sets ``run`` (a callable taking the
parsed arguments and returning the exit code); list it in ``COMMANDS``. ``graph``, ``identity`` and ``crm``
are the emulators.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _host(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from devkit import host

    parser = subparsers.add_parser(
        "host",
        help="run a function_app.py locally: HTTP triggers, queue triggers on Azurite, timers",
        description="Run a v2-model function_app.py as the Azure Functions host does (see docs/devkit.md).",
    )
    host.add_arguments(parser)
    parser.set_defaults(run=host.run)


def _demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from devkit import demo

    parser = subparsers.add_parser(
        "demo",
        help="start everything locally, connect a user and show the two-way sync with timings",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(parser)
    parser.set_defaults(run=demo.run)


def _graph(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from devkit.graph_emulator import cli

    parser = subparsers.add_parser("graph", help="run the Microsoft Graph emulator (see docs/devkit.md)")
    cli.add_arguments(parser)
    parser.set_defaults(run=cli.run)


def _identity(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from devkit import identity_emulator

    parser = subparsers.add_parser(
        "identity", help="run the Entra ID emulator over HTTPS (see docs/devkit.md)"
    )
    identity_emulator.add_arguments(parser)
    parser.set_defaults(run=identity_emulator.run)


def _crm(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from devkit import crm_emulator

    parser = subparsers.add_parser("crm", help="run the CRM emulator (the outbound CRM contract)")
    crm_emulator.add_arguments(parser)
    parser.set_defaults(run=crm_emulator.run)


COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _host,
    _demo,
    _graph,
    _identity,
    _crm,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit", description="Local development and test kit.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
