"""The browser endpoints: ``/authorize`` (auth code + PKCE) and ``/adminconsent``, answered by redirect."""

from __future__ import annotations

import html
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from devkit.identity_emulator.directory import (
    _ID_NAMESPACE,
    CONSUMER_TENANT_ID,
    App,
    SignInOutcome,
    User,
    _Authority,
    _PendingSignIn,
)
from devkit.identity_emulator.errors import _missing, _OAuthError, _RedirectError
from devkit.identity_emulator.grants import GRAPH_RESOURCE, _AuthCode, _digest, _parse_scopes
from devkit.identity_emulator.issuer import Issuer
from devkit.identity_emulator.server import _Request, _Response


class BrowserSignIn(Issuer):
    """The endpoints a browser visits; their answers go back to the app's redirect URI."""

    # -- /authorize

    def _authorize(self, request: _Request, match: re.Match[str]) -> _Response:
        params = {**request.query, **request.form}
        return self._browser_flow(
            request,
            match,
            params,
            params.get("response_mode") or "query",
            lambda authority, app, redirect_uri: self._sign_in(authority, app, params, redirect_uri),
        )

    def _browser_flow(
        self,
        request: _Request,
        match: re.Match[str],
        params: Mapping[str, str],
        response_mode: str,
        decide: Callable[[_Authority, App, str], dict[str, str]],
    ) -> _Response:
        """Check tenant, app and redirect URI (errors on Entra's own page), then redirect ``decide``'s answer.

        ``decide`` gets the authority, the app and the redirect URI and returns the success parameters; a
        ``_RedirectError`` it raises goes back to the app as error parameters.
        """
        with self._lock:
            authority = self._resolve_authority(match["tenant"])
            app = self._registered_app(params.get("client_id"), authority)
            redirect_uri = params.get("redirect_uri")
            if not redirect_uri:
                raise _missing("redirect_uri")
            if redirect_uri not in app.redirect_uris:
                raise _OAuthError("invalid_request", 50011, redirect_uri, app.client_id)
            reply = _Reply(redirect_uri, params.get("state"), response_mode)
            try:
                answer = decide(authority, app, redirect_uri)
            except _RedirectError as error:
                correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
                return reply.send(self._redirect_error_params(error, correlation_id), error)
        return reply.send(answer)

    def _redirect_error_params(self, error: _OAuthError, correlation_id: str) -> dict[str, str]:
        body = self._error_body(error, correlation_id)
        params = {"error": error.error, "error_description": body["error_description"]}
        if error.subcode:
            params["error_subcode"] = error.subcode
        params["error_uri"] = body["error_uri"]
        return params

    def _sign_in(
        self, authority: _Authority, app: App, params: Mapping[str, str], redirect_uri: str
    ) -> dict[str, str]:
        """Validate the request, pick the user and the outcome, and return the success parameters."""
        response_type = params.get("response_type")
        if not response_type:
            raise _missing("response_type", redirect=True)
        if response_type != "code":
            raise _RedirectError("unsupported_response_type", 700054, response_type)
        challenge = params.get("code_challenge")
        if not challenge:
            raise _missing("code_challenge", redirect=True)
        if params.get("code_challenge_method") != "S256":
            raise _RedirectError(
                "invalid_request", 9002313, detail="code_challenge_method must be S256 (PKCE is required)"
            )
        if len(challenge) != 43:
            raise _RedirectError("invalid_request", 501491)
        if not params.get("scope"):
            raise _missing("scope", redirect=True)
        scopes = _parse_scopes(params.get("scope"), redirect=True)

        pending = self._pending.popleft() if self._pending else None
        outcome = pending.outcome if pending else SignInOutcome.SUCCESS
        user = self._choose_user(authority, params.get("login_hint"), pending)
        if not authority.admits(user):
            idp = "live.com" if user.personal else "sts.windows.net"
            raise _OAuthError(
                "invalid_request",
                50020,
                user.upn,
                idp,
                authority.tenant_id or authority.segment,
                app.client_id,
            )
        if outcome is SignInOutcome.CONSENT_DENIED:
            raise _RedirectError("access_denied", 65004, subcode="cancel")
        if outcome is SignInOutcome.ADMIN_APPROVAL_REQUIRED:
            raise _RedirectError("access_denied", 90094)

        wanted = scopes.resolve(app)
        missing = wanted - self._consented(user, app)
        if missing or params.get("prompt") == "consent":
            if self._tenants[user.tenant_id].require_admin_consent and missing:
                raise _RedirectError("access_denied", 90094)
            if params.get("prompt") == "none":
                raise _RedirectError("consent_required", 65001, app.client_id, app.display_name)
            key = (user.oid, app.client_id)  # the user accepts the consent prompt
            self._user_consents[key] = self._user_consents.get(key, frozenset()) | wanted

        code = secrets.token_urlsafe(48)
        self._codes[_digest(code)] = _AuthCode(
            client_id=app.client_id,
            redirect_uri=redirect_uri,
            code_challenge=challenge,
            user_oid=user.oid,
            tenant_id=user.tenant_id,
            scopes=scopes,
            permissions=wanted,
            nonce=params.get("nonce"),
            issued_at=self.clock.now(),
        )
        return {"code": code, "session_state": str(uuid.uuid5(_ID_NAMESPACE, f"session:{user.oid}"))}

    def _choose_user(
        self, authority: _Authority, login_hint: str | None, pending: _PendingSignIn | None
    ) -> User:
        """Queued user, else login_hint, else the authority's first user; a personal outcome needs an MSA."""
        user = pending.user if pending else None
        if user is None and login_hint:
            user = self._find_user(login_hint)
            if user is None:
                raise _OAuthError("invalid_request", 50034, login_hint, authority.segment)
        personal = pending is not None and pending.outcome is SignInOutcome.PERSONAL_ACCOUNT
        if personal and (user is None or not user.personal):
            user = self._default_user(CONSUMER_TENANT_ID)
        if user is None:
            if authority.tenant_id is not None:
                user = self._default_user(authority.tenant_id)
            else:
                user = next((u for u in self._users.values() if not u.personal), None)
        if user is None:
            raise _OAuthError("invalid_request", 50034, login_hint or "(none)", authority.segment)
        return user

    def _default_user(self, tenant_id: str) -> User:
        found = next((u for u in self._users.values() if u.tenant_id == tenant_id), None)
        if found is not None:
            return found
        if tenant_id == CONSUMER_TENANT_ID:
            return self.add_personal_account("personal.account@outlook.com", display_name="Personal Account")
        raise _OAuthError("invalid_request", 50034, "(none)", tenant_id)

    # -- /adminconsent

    def _admin_consent(self, request: _Request, match: re.Match[str]) -> _Response:
        params = request.query
        return self._browser_flow(
            request,
            match,
            params,
            "query",
            lambda authority, app, _redirect_uri: self._record_admin_consent(authority, app, params),
        )

    def _record_admin_consent(
        self, authority: _Authority, app: App, params: Mapping[str, str]
    ) -> dict[str, str]:
        scopes = _parse_scopes(params.get("scope") or f"{GRAPH_RESOURCE}/.default", redirect=True)
        pending = self._pending.popleft() if self._pending else None
        admin = pending.user if pending else None
        if admin is None and authority.tenant_id is not None:
            admin = next(
                (u for u in self._users.values() if u.tenant_id == authority.tenant_id and u.is_admin), None
            )
        if admin is None:
            raise _OAuthError("invalid_request", 50034, "(an administrator)", authority.segment)
        if admin.personal or not authority.admits(admin):
            idp = "live.com" if admin.personal else "sts.windows.net"
            raise _OAuthError("invalid_request", 50020, admin.upn, idp, authority.segment, app.client_id)
        if pending is not None and pending.outcome is SignInOutcome.CONSENT_DENIED:
            raise _RedirectError("access_denied", 65004, subcode="cancel")
        if not admin.is_admin or (pending and pending.outcome is SignInOutcome.ADMIN_APPROVAL_REQUIRED):
            raise _RedirectError("access_denied", 90094)
        granted = scopes.resolve(app)
        key = (admin.tenant_id, app.client_id)
        self._admin_consents[key] = self._admin_consents.get(key, frozenset()) | granted
        return {
            "admin_consent": "True",
            "tenant": admin.tenant_id,
            "scope": " ".join(f"{GRAPH_RESOURCE}/{name}" for name in sorted(granted)),
        }


@dataclass(frozen=True)
class _Reply:
    """Where ``/authorize`` answers: the app's redirect URI, as a query string or an auto-posting form."""

    redirect_uri: str
    state: str | None
    response_mode: str

    def send(self, params: Mapping[str, str], error: _OAuthError | None = None) -> _Response:
        values = dict(params)
        if self.state is not None:
            values["state"] = self.state
        error_name, error_code = (error.error, error.code) if error else (None, None)
        if self.response_mode == "form_post":
            fields = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>'
                for k, v in values.items()
            )
            page = (
                "<html><head><title>Working...</title></head><body>"
                f'<form method="POST" name="hiddenform" action="{html.escape(self.redirect_uri)}">{fields}'
                "<noscript><p>Script is disabled. Click Submit to continue.</p>"
                '<input type="submit" value="Submit"/></noscript></form>'
                "<script>document.forms[0].submit();</script></body></html>"
            )
            return _Response(200, page.encode(), "text/html; charset=utf-8", (), error_name, error_code)
        separator = "&" if urlsplit(self.redirect_uri).query else "?"
        location = self.redirect_uri + separator + urlencode(values)
        return _Response(
            302, b"", "text/html; charset=utf-8", (("Location", location),), error_name, error_code
        )
