"""``python -m devkit crm``: the CRM emulator alone, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from devkit.crm_emulator.emulator import CrmEmulator
from devkit.crm_emulator.errors import ContractError

DEFAULT_PORT = 7103  # CRM_BASE_URL in local.settings.sample.json
# The local values of local.settings.sample.json: not secrets, but what a local service is configured with.
DEFAULT_API_KEY = "local-dev-crm-api-key"
DEFAULT_SIGNING_SECRET = "local-dev-crm-signing-secret"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``crm`` command's options (``python -m devkit crm``)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)"
    )
    parser.add_argument("--base-path", default="", help="path prefix of the contract routes, e.g. /crm/v1")
    parser.add_argument(
        "--seed", type=Path, help="JSON file {users, accounts, contacts, leads} to load at start"
    )


def run(args: argparse.Namespace) -> int:
    """Run the CRM emulator until SIGINT/SIGTERM.

    The API key and signing secret are ``CRM_API_KEY`` and ``CRM_SIGNING_SECRET`` from the environment when
    set, else the local values of ``local.settings.sample.json``. Prints one JSON line (addresses, no secret).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    emulator = CrmEmulator(
        os.environ.get("CRM_API_KEY") or DEFAULT_API_KEY,
        os.environ.get("CRM_SIGNING_SECRET") or DEFAULT_SIGNING_SECRET,
        host=args.host,
        port=args.port,
        base_path=args.base_path,
    )
    if args.seed is not None:
        try:
            emulator.seed(json.loads(args.seed.read_text(encoding="utf-8")))
        except (OSError, ValueError, ContractError) as exc:
            print(f"error: cannot load the seed file {args.seed}: {exc}", file=sys.stderr)
            return 2
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with emulator:
        print(json.dumps({"crmBaseUrl": emulator.base_url, "controlUrl": emulator.devkit_url}), flush=True)
        try:
            while not stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CRM emulator alone: ``python -c 'from devkit.crm_emulator import main; main()'``."""
    parser = argparse.ArgumentParser(prog="python -m devkit crm", description=run.__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
