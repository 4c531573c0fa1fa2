"""``python -m devkit graph``: run the Graph emulator alone until interrupted.

Prints one line per endpoint on start (``graph-emulator base_url=...`` / ``control_url=...``) so that a parent
process can read where it listens.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from devkit.graph_emulator.emulator import GraphEmulator
from devkit.graph_emulator.settings import EmulatorSettings
from devkit.tls import ServerCertificate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``graph`` command's options (for ``devkit/__main__.py``'s sub-parser, or ``main`` below)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--jwks-url", help="the identity emulator's JWKS URL (HTTPS)")
    keys.add_argument("--jwks-file", type=Path, help="a JWK set as JSON ({'keys': [...]})")
    keys.add_argument(
        "--insecure-accept-any-token",
        action="store_true",
        help="accept any well-formed JWT (manual poking only)",
    )
    parser.add_argument("--ca", help="CA bundle to trust for --jwks-url and HTTPS webhooks")
    parser.add_argument("--cert", type=Path, help="server certificate (PEM) to serve HTTPS")
    parser.add_argument("--key", type=Path, help="private key (PEM) of --cert")
    parser.add_argument(
        "--mailbox", action="append", default=[], metavar="UPN[=ID]", help="create a mailbox (repeatable)"
    )
    parser.add_argument("--settings", help="JSON object of EmulatorSettings fields (snake_case)")
    parser.add_argument("--verbose", action="store_true")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit graph", description="Run the Microsoft Graph emulator."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad arguments."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    if not (args.jwks_url or args.jwks_file or args.insecure_accept_any_token):
        print("error: give --jwks-url, --jwks-file or --insecure-accept-any-token", file=sys.stderr)
        return 2
    if bool(args.cert) != bool(args.key):
        print("error: --cert and --key go together", file=sys.stderr)
        return 2
    jwks: Any = args.jwks_url
    if args.jwks_file:
        jwks = json.loads(args.jwks_file.read_text())["keys"]
    settings = EmulatorSettings()
    if args.ca:
        settings.webhook_ca_path = args.ca
    emulator = GraphEmulator(
        jwks=jwks,
        jwks_ca_path=args.ca,
        settings=settings,
        host=args.host,
        port=args.port,
        certificate=ServerCertificate(args.cert, args.key) if args.cert else None,
        verify_tokens=not args.insecure_accept_any_token,
    )
    if args.settings:
        emulator.update_settings(**json.loads(args.settings))
    for spec in args.mailbox:
        upn, _, user_id = spec.partition("=")
        emulator.add_mailbox(user_id or None, upn=upn)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with emulator:
        print(f"graph-emulator base_url={emulator.base_url}", flush=True)
        print(f"graph-emulator control_url={emulator.control_url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
