"""Errors as Entra words them: ``AADSTS`` codes and messages, and the control API's own error."""

from __future__ import annotations

import datetime as dt

_MESSAGES: dict[int, str] = {
    50011: "The redirect URI '{0}' specified in the request does not match the redirect URIs configured for "
    "the application '{1}'. Make sure the redirect URI sent in the request matches one added to your "
    "application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more "
    "about how to fix this.",
    50020: "User account '{0}' from identity provider '{1}' does not exist in tenant '{2}' and cannot access "
    "the application '{3}' in that tenant.",
    50027: "JWT token is invalid or malformed.",
    50034: "The user account {0} does not exist in the '{1}' directory. To sign into this application, the "
    "account must be added to the directory.",
    50059: "No tenant-identifying information found in either the request or implied by any provided "
    "credentials.",
    50173: "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user "
    "might have changed or reset their password. The grant was issued on '{0}' and the TokensValidFrom date "
    "(before which tokens are not valid) for this user is '{1}'.",
    54005: "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
    "existing refresh token.",
    65001: "The user or administrator has not consented to use the application with ID '{0}' named '{1}'. "
    "Send an interactive authorization request for this user and resource.",
    65004: "User declined to consent to access the app.",
    70000: "Provided grant is invalid or malformed.",
    70003: "The app requested an unsupported grant type '{0}'.",
    70008: "The provided authorization code or refresh token has expired due to inactivity. Send a new "
    "interactive authorization request for this user and resource.",
    70011: "The provided value for the input parameter 'scope' is not valid. The scope {0} is not valid.",
    90002: "Tenant '{0}' not found. Check to make sure you have the correct tenant ID and are signing into "
    "the correct cloud.",
    90094: "The grant requires admin permission.",
    500011: "The resource principal named {0} was not found in the tenant named {1}. This can happen if the "
    "application has not been installed by the administrator of the tenant or consented to by any user in "
    "the tenant. You might have sent your authentication request to the wrong tenant.",
    501481: "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
    501491: "Invalid size of Code_Challenge parameter.",
    700016: "Application with identifier '{0}' was not found in the directory '{1}'. This can happen if the "
    "application has not been installed by the administrator of the tenant or consented to by any user in "
    "the tenant. You may have sent your authentication request to the wrong tenant.",
    700021: "Client assertion application identifier doesn't match 'client_id' parameter.",
    700024: "Client assertion is not within its valid time range. Current time: {0}, assertion valid from "
    "{1}, expiry time of assertion {2}.",
    700027: "Client assertion failed signature validation.",
    700054: "response_type '{0}' is not enabled for the application.",
    700082: "The refresh token has expired due to inactivity. The token was issued on {0} and was inactive "
    "for 90.00:00:00.",
    700211: "No matching federated identity record found for presented assertion issuer '{0}'. Please check "
    "your federated identity credential Subject, Audience and Issuer against the presented assertion.",
    700212: "No matching federated identity record found for presented assertion audience '{0}'. Please "
    "check your federated identity credential Subject, Audience and Issuer against the presented assertion.",
    700213: "No matching federated identity record found for presented assertion subject '{0}'. Please check "
    "your federated identity credential Subject, Audience and Issuer against the presented assertion.",
    900144: "The request body must contain the following parameter: '{0}'.",
    1002012: "The provided value for scope {0} is not valid. Client credential flows must have a scope value "
    "with /.default suffixed to the resource identifier (application ID URI).",
    7000215: "Invalid client secret provided. Ensure the secret being sent in the request is the client "
    "secret value, not the client secret ID, for a secret added to app '{0}'.",
    7000218: "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    9002313: "Invalid request. Request is malformed or invalid.",
}


class _OAuthError(Exception):
    """An error answered as Entra does: JSON body on the token endpoint, or Entra's own error page."""

    def __init__(
        self,
        error: str,
        code: int,
        *args: object,
        status: int = 400,
        detail: str | None = None,
        suberror: str | None = None,
        subcode: str | None = None,
    ) -> None:
        message = _MESSAGES[code].format(*args)
        if detail:
            message += f" (devkit: {detail})"
        super().__init__(f"AADSTS{code}: {message}")
        self.error = error
        self.code = code
        self.status = status
        self.suberror = suberror
        self.subcode = subcode


class _RedirectError(_OAuthError):
    """An ``/authorize`` error that goes back to the app's redirect URI rather than to a page."""


class _ControlError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _missing(name: str, redirect: bool = False) -> _OAuthError:
    kind = _RedirectError if redirect else _OAuthError
    return kind("invalid_request", 900144, name)


def _timestamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
