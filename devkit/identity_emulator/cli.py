"""Running the emulator alone (``python -m devkit identity``): a demo directory, served until stopped."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from devkit.identity_emulator.directory import App, FederatedCredential, ManagedIdentity, Tenant, User
from devkit.identity_emulator.emulator import IdentityEmulator
from devkit.tls import CertAuthority


@dataclass(frozen=True)
class DemoDirectory:
    tenant: Tenant
    users: tuple[User, ...]
    personal_account: User
    app: App
    client_secret: str = field(repr=False)
    managed_identity: ManagedIdentity


def seed_demo_directory(
    emulator: IdentityEmulator,
    *,
    tenant_id: str | None = None,
    client_id: str | None = None,
    redirect_uris: Sequence[str] = ("http://localhost:7071/api/auth/callback",),
) -> DemoDirectory:
    """A tenant with an admin and a user, a personal account, and the sync app (secret and FIC)."""
    tenant = emulator.add_tenant(tenant_id, domain="contoso.onmicrosoft.com", display_name="Contoso")
    admin = emulator.add_user(
        tenant.tenant_id, "admin@contoso.onmicrosoft.com", display_name="Contoso Admin", is_admin=True
    )
    user = emulator.add_user(
        tenant.tenant_id, "adele.vance@contoso.onmicrosoft.com", display_name="Adele Vance"
    )
    personal = emulator.add_personal_account("pat.personal@outlook.com", display_name="Pat Personal")
    identity = emulator.add_managed_identity(tenant.tenant_id)
    secret = secrets.token_urlsafe(32)
    app = emulator.register_app(
        tenant.tenant_id,
        client_id=client_id,
        redirect_uris=redirect_uris,
        client_secret=secret,
        federated_credentials=[
            FederatedCredential(emulator.issuer(tenant.tenant_id), identity.principal_id),
        ],
        application_permissions=("Calendars.ReadWrite",),
    )
    return DemoDirectory(tenant, (admin, user), personal, app, secret, identity)


def serve(emulator: IdentityEmulator, stop: threading.Event | None = None) -> None:
    """Block until ``stop`` is set or the process gets SIGINT/SIGTERM (the emulator must be started)."""
    stop = stop or threading.Event()
    if threading.current_thread() is not threading.main_thread():
        stop.wait()
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``identity`` command's options (``python -m devkit identity``)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="HTTPS port (default: a free one)")
    parser.add_argument(
        "--state-dir", type=Path, default=Path(".devkit/identity"), help="CA and identity.json go here"
    )
    parser.add_argument("--tenant-id", default=None, help="the demo tenant's id (default: a new GUID)")
    parser.add_argument("--client-id", default=None, help="the demo app's id (default: a new GUID)")
    parser.add_argument(
        "--redirect-uri",
        action="append",
        dest="redirect_uris",
        default=None,
        help="a redirect URI of the demo app (repeatable; default: the local host's /api/auth/callback)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the emulator with a demo directory until SIGINT/SIGTERM.

    Prints one JSON line (addresses and ids, no secret) to stdout; the client secret and the managed
    identity header go to ``<state-dir>/identity.json`` (mode 0600).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    state_dir: Path = args.state_dir
    ca = CertAuthority(state_dir / "ca")
    with IdentityEmulator(ca, host=args.host, port=args.port) as emulator:
        demo = seed_demo_directory(
            emulator,
            tenant_id=args.tenant_id,
            client_id=args.client_id,
            redirect_uris=args.redirect_uris or ("http://localhost:7071/api/auth/callback",),
        )
        config_path = state_dir / "identity.json"
        summary = {
            "base_url": emulator.base_url,
            "authority": emulator.authority(demo.tenant.tenant_id),
            "ca_cert": str(ca.cert_path),
            "tenant_id": demo.tenant.tenant_id,
            "client_id": demo.app.client_id,
            "users": [u.upn for u in (*demo.users, demo.personal_account)],
            "managed_identity_client_id": demo.managed_identity.client_id,
            "managed_identity_endpoint": emulator.managed_identity_endpoint,
            "config": str(config_path),
        }
        config_path.touch(mode=0o600)
        config_path.chmod(0o600)
        secrets_too = {"client_secret": demo.client_secret, **emulator.managed_identity_environment()}
        config_path.write_text(json.dumps({**summary, **secrets_too}, indent=2))
        print(json.dumps(summary), flush=True)  # the one line a caller reads
        serve(emulator)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the identity emulator alone: ``python -c 'from devkit.identity_emulator import main; main()'``."""
    parser = argparse.ArgumentParser(prog="python -m devkit identity", description=run.__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
