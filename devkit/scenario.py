"""The service's world for scenarios: the emulators as one world, a browser made of requests, and storage.

Used by the e2e tests (``tests/e2e/kit.py`` re-exports these names) and by ``python -m devkit demo``. Nothing
is mocked: the local Functions host runs ``function_app.py`` in its own process against Azurite, the Entra ID
emulator (HTTPS, a throw-away CA), the Graph emulator (HTTPS, same CA, tokens checked against the identity
emulator's keys) and the CRM emulator; the caller drives them all over real sockets.

    running_world(ca_dir, public_base_urls, user_names)   the emulators, started, with a Contoso tenant
    World.host_settings(public_base_url, prefix, key)     the app settings pointing a host at them
    Browser(ca, seen).sign_in(authorize_url)              the user's trip through Entra ID to the callback
    fast_queue_host_json(directory)                       host.json with short queue waits
    storage_for(connection_string, prefix)                the service's tables, to look into them
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlsplit

import requests

from devkit.crm_emulator import CrmEmulator
from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.identity_emulator import IdentityEmulator, User
from devkit.jwt import SigningKey
from devkit.tls import CertAuthority
from sync_core.adapters.tables import TableStorage
from sync_core.config import EncryptionKey, Secret, StorageSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
CRM_ORIGIN = "https://crm.example.test"
RETURN_URL = f"{CRM_ORIGIN}/settings/microsoft-365?tab=connection"
# Fresh per process: nothing a run uses outlives it.
CLIENT_SECRET = "devkit-client-secret-" + secrets.token_hex(8)
CRM_API_KEY = "devkit-crm-api-key-" + secrets.token_hex(8)
CRM_SIGNING_SECRET = "devkit-crm-signing-secret-" + secrets.token_hex(8)


class ScenarioError(AssertionError):
    """The world answered what a scenario did not expect (an AssertionError, so tests show it)."""


def new_key(key_id: str) -> EncryptionKey:
    return EncryptionKey(key_id, Secret(base64.b64encode(secrets.token_bytes(32)).decode()))


def key_setting(*keys: EncryptionKey) -> str:
    return ",".join(f"{key.key_id}:{key.key.value}" for key in keys)


@dataclass
class World:
    """The emulators, the directory in them, and what a host needs to be pointed at them."""

    ca: CertAuthority
    identity: IdentityEmulator
    graph: GraphEmulator
    crm: CrmEmulator
    tenant_id: str
    client_id: str
    users: dict[str, User]  # by short name: alice, bob, carol, admin, frank (another tenant), …
    managed_identity_client_id: str
    secrets_seen: set[str] = field(default_factory=set)  # every secret value the logs must never show
    keys: list[EncryptionKey] = field(default_factory=list)  # every token encryption key a host was given

    def host_settings(
        self, public_base_url: str, prefix: str, key: EncryptionKey, **overrides: str
    ) -> dict[str, str]:
        settings = {
            "TABLE_NAME_PREFIX": prefix,
            "SYNC_QUEUE_NAME": f"{prefix}sync",  # the full queue name: no prefix is added to queue names
            "GRAPH_BASE_URL": self.graph.base_url,
            "AUTHORITY_HOST": self.identity.base_url,
            "TENANT_ID": self.tenant_id,
            "CLIENT_ID": self.client_id,
            "CLIENT_SECRET": CLIENT_SECRET,
            "TOKEN_ENCRYPTION_KEY": key_setting(key),
            "PUBLIC_BASE_URL": public_base_url,
            "CRM_BASE_URL": self.crm.base_url,
            "CRM_API_KEY": CRM_API_KEY,
            "CRM_SIGNING_SECRET": CRM_SIGNING_SECRET,
            "CRM_RETURN_URL_ORIGIN": CRM_ORIGIN,
            "RETRY_AFTER_CAP_SECONDS": "2",
            # The host's MSAL, Graph and CRM sessions read the CA bundle from the environment.
            "REQUESTS_CA_BUNDLE": str(self.ca.cert_path),
        }
        settings.update(overrides)
        self.secrets_seen.update({CLIENT_SECRET, CRM_API_KEY, CRM_SIGNING_SECRET, key.key.value})
        if key not in self.keys:
            self.keys.append(key)
        return settings


@contextlib.contextmanager
def running_world(
    ca_dir: Path,
    public_base_urls: Sequence[str],
    user_names: Sequence[str],
    graph_settings: EmulatorSettings | None = None,
) -> Iterator[World]:
    """The emulators, started: one Contoso tenant with ``user_names`` (upn ``{name}@contoso.example``), an app
    registration whose redirect URIs are each public base URL's callback, Graph trusting the identity
    emulator's keys and sharing its clock, and the CRM emulator under ``/crm/v1``."""
    ca = CertAuthority(ca_dir)
    identity = IdentityEmulator(ca, signing_key=SigningKey.generate("devkit-" + secrets.token_hex(4)))
    graph = GraphEmulator(
        jwks=identity.jwks,
        time_source=identity.clock.now,
        certificate=ca.issue_server_certificate(name="graph-" + secrets.token_hex(4)),
        settings=graph_settings or EmulatorSettings(notification_retry_delays=(0.1, 0.2)),
    )
    crm = CrmEmulator(CRM_API_KEY, CRM_SIGNING_SECRET, base_path="/crm/v1")
    with identity, graph, crm:
        contoso = identity.add_tenant(domain="contoso.example", display_name="Contoso")
        users = {name: identity.add_user(contoso.tenant_id, f"{name}@contoso.example") for name in user_names}
        managed_identity = identity.add_managed_identity(contoso.tenant_id)
        app = identity.register_app(
            contoso.tenant_id,
            redirect_uris=[f"{url}/api/auth/callback" for url in public_base_urls],
            client_secret=CLIENT_SECRET,
        )
        yield World(
            ca=ca,
            identity=identity,
            graph=graph,
            crm=crm,
            tenant_id=contoso.tenant_id,
            client_id=app.client_id,
            users=users,
            managed_identity_client_id=managed_identity.client_id,
        )


def fast_queue_host_json(directory: Path) -> Path:
    """The repository's host.json with the queue trigger's waits shortened: failed messages come back at once
    (visibilityTimeout 0) and empty queues are polled every 0.2 s. Retries and poison rules (maxDequeueCount)
    stay as deployed."""
    document = json.loads((REPO_ROOT / "host.json").read_text(encoding="utf-8"))
    document["extensions"]["queues"].update(
        {"visibilityTimeout": "00:00:00", "maxPollingInterval": "00:00:00.2"}
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "host.json"
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


# --- the browser -------------------------------------------------------------------------------------------


class _AutoPostForm(HTMLParser):
    """Entra's ``form_post`` answer: a self-submitting form; a browser would post it, so this one does."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.action = values.get("action")
        elif tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.fields[str(values["name"])] = values.get("value") or ""


@dataclass(frozen=True)
class Landing:
    """Where the browser ended: the service's answer (a redirect to the CRM page, or a page of its own)."""

    status: int
    location: str | None
    text: str

    @property
    def outcome(self) -> dict[str, str]:
        """The query parameters the service added to the CRM return URL."""
        if self.location is None:
            raise ScenarioError(f"no redirect: {self.status} {self.text[:200]}")
        query = parse_qs(urlsplit(self.location).query)
        return {name: values[-1] for name, values in query.items() if name in {"status", "reason"}}


@dataclass(frozen=True)
class Arrival:
    """What Entra sent the browser back with, before the browser delivers it to the callback."""

    method: str  # "POST" (form_post) or "GET" (query)
    url: str
    fields: dict[str, str]


class Browser:
    """A browser made of ``requests``: follows Entra's redirects and auto-posted forms; trusts the CA."""

    def __init__(self, ca: CertAuthority, seen: set[str]) -> None:
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(ca.cert_path)
        self._seen = seen

    def visit_entra(self, url: str) -> Arrival:
        """Open an Entra URL (authorize or admin consent) and return what Entra sends back to the app."""
        answer = self.session.get(url, allow_redirects=False, timeout=10)
        if answer.status_code in (302, 303):
            location = answer.headers["Location"]
            fields = dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))
            self._remember(fields)
            return Arrival("GET", location, fields)
        if answer.status_code != 200:
            raise ScenarioError(f"Entra answered {answer.status_code}: {answer.text[:300]}")
        form = _AutoPostForm()
        form.feed(answer.text)
        if not form.action:
            raise ScenarioError(f"Entra's answer holds no form to post: {answer.text[:300]}")
        self._remember(form.fields)
        return Arrival("POST", form.action, form.fields)

    def deliver(self, arrival: Arrival, fields: Mapping[str, str] | None = None) -> Landing:
        """Deliver (possibly altered) ``fields`` to the app's callback; the service's answer, not followed."""
        values = dict(arrival.fields if fields is None else fields)
        if arrival.method == "POST":
            answer = self.session.post(arrival.url, data=values, allow_redirects=False, timeout=30)
        else:
            target = arrival.url.split("?", 1)[0]
            answer = self.session.get(target, params=values, allow_redirects=False, timeout=30)
        return Landing(answer.status_code, answer.headers.get("Location"), answer.text)

    def sign_in(self, authorize_url: str) -> Landing:
        return self.deliver(self.visit_entra(authorize_url))

    def open(self, url: str) -> requests.Response:
        return self.session.get(url, allow_redirects=False, timeout=30)

    def _remember(self, fields: Mapping[str, str]) -> None:
        if fields.get("code"):  # an authorization code: must never reach a log line
            self._seen.add(fields["code"])

    def close(self) -> None:
        self.session.close()


# --- looking into storage ----------------------------------------------------------------------------------


def storage_for(connection_string: str, prefix: str) -> TableStorage:
    return TableStorage(
        StorageSettings(
            connection_string=Secret(connection_string),
            table_service_uri=None,
            queue_service_uri=None,
            managed_identity_client_id=None,
            table_prefix=prefix,
        )
    )
