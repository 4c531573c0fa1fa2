"""How a confidential client proves itself at ``/token``: a secret, a certificate or a federated assertion."""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devkit.identity_emulator.directory import App, _Authority
from devkit.identity_emulator.errors import _missing, _OAuthError, _timestamp
from devkit.identity_emulator.issuer import Issuer
from devkit.jwt import b64url_decode

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

ASSERTION_SKEW = 300


class ClientAuthentication(Issuer):
    """Checks the client credentials of a token request."""

    def _authenticate_client(
        self, authority: _Authority, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[App, str]:
        """The calling app and how it proved itself: "secret", "certificate" or "federated"."""
        client_id = form.get("client_id")
        secret = form.get("client_secret")
        basic = headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(basic[6:].strip(), validate=True).decode()
            except ValueError:
                raise _OAuthError("invalid_client", 9002313, status=401, detail="bad Basic header") from None
            basic_id, _, basic_secret = decoded.partition(":")
            if client_id and client_id != unquote_plus(basic_id):
                raise _OAuthError(
                    "invalid_client", 9002313, status=401, detail="client_id differs from the Basic header's"
                )
            client_id, secret = unquote_plus(basic_id), unquote_plus(basic_secret)
        app = self._registered_app(client_id, authority)
        assertion = form.get("client_assertion")
        if assertion:
            if form.get("client_assertion_type") != JWT_BEARER:
                raise _missing("client_assertion_type")
            return app, self._verify_client_assertion(authority, app, assertion)
        if secret:
            if not any(hmac.compare_digest(secret.encode(), s.encode()) for s in app.client_secrets):
                raise _OAuthError("invalid_client", 7000215, app.client_id, status=401)
            return app, "secret"
        raise _OAuthError("invalid_client", 7000218, status=401)

    def _verify_client_assertion(self, authority: _Authority, app: App, assertion: str) -> str:
        try:
            header, claims, signing_input, signature = _decode_jwt(assertion)
        except ValueError:
            raise _OAuthError("invalid_client", 50027, status=401) from None
        if claims.get("iss") == app.client_id:
            self._check_certificate_assertion(authority, app, header, claims, signing_input, signature)
            method = "certificate"
        else:
            self._check_federated_assertion(app, header, claims, signing_input, signature)
            method = "federated"
        self._check_assertion_time(claims)
        return method

    def _check_certificate_assertion(
        self,
        authority: _Authority,
        app: App,
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
        signing_input: bytes,
        signature: bytes,
    ) -> None:
        if claims.get("sub") != app.client_id:
            raise _OAuthError("invalid_client", 700021, status=401)
        thumbprint = _thumbprint_hex(header.get("x5t#S256")) or _thumbprint_hex(header.get("x5t"))
        certificate = next(
            (c for c in app.certificates if thumbprint in (c.sha1_thumbprint, c.sha256_thumbprint)), None
        )
        if certificate is None:
            raise _OAuthError(
                "invalid_client",
                700027,
                status=401,
                detail=f"no certificate with thumbprint {thumbprint or '(none)'} is registered on the app",
            )
        if not _signature_valid(header.get("alg"), certificate.public_key, signing_input, signature):
            raise _OAuthError("invalid_client", 700027, status=401)
        tenant = self._tenants.get(authority.tenant_id or "")
        audiences = {self.token_endpoint(authority.segment)}
        if tenant is not None:
            audiences |= {self.token_endpoint(tenant.tenant_id), self.token_endpoint(tenant.domain)}
        audience = claims.get("aud")
        if not isinstance(audience, str) or audience not in audiences:
            raise _OAuthError(
                "invalid_client", 700027, status=401, detail="the assertion's aud is not this token endpoint"
            )

    def _check_federated_assertion(
        self,
        app: App,
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
        signing_input: bytes,
        signature: bytes,
    ) -> None:
        issuer = str(claims.get("iss"))
        candidates = [c for c in app.federated_credentials if c.issuer == issuer]
        if not candidates:
            raise _OAuthError("invalid_client", 700211, issuer, status=401)
        # Only this emulator's own tokens (its managed identities) can be verified offline.
        own = issuer.startswith(self.base_url + "/") and header.get("kid") == self._signing_key.kid
        public_key = self._signing_key.private_key.public_key()
        if not own or not _signature_valid(header.get("alg"), public_key, signing_input, signature):
            raise _OAuthError("invalid_client", 700027, status=401)
        subject = str(claims.get("sub"))
        candidates = [c for c in candidates if c.subject == subject]
        if not candidates:
            raise _OAuthError("invalid_client", 700213, subject, status=401)
        audience = claims.get("aud")
        presented = {str(a) for a in audience} if isinstance(audience, list) else {str(audience)}
        if not any(presented & set(c.audiences) for c in candidates):
            raise _OAuthError("invalid_client", 700212, audience, status=401)

    def _check_assertion_time(self, claims: Mapping[str, Any]) -> None:
        expires, not_before = claims.get("exp"), claims.get("nbf", claims.get("iat", 0))
        if not isinstance(expires, int | float) or not isinstance(not_before, int | float):
            raise _OAuthError("invalid_client", 50027, status=401)
        for now in (time.time(), self.clock.now()):  # the caller's wall clock, or ours
            if not_before - ASSERTION_SKEW <= now <= expires + ASSERTION_SKEW:
                return
        raise _OAuthError(
            "invalid_client",
            700024,
            _timestamp(self.clock.now()),
            _timestamp(not_before),
            _timestamp(expires),
            status=401,
        )


def _decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims, signing input and signature of a JWS; ``ValueError`` if it is not one."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(b64url_decode(header_b64))
    claims = json.loads(b64url_decode(payload_b64))
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a JWT")
    return header, claims, f"{header_b64}.{payload_b64}".encode("ascii"), b64url_decode(signature_b64)


def _signature_valid(
    algorithm: object, public_key: rsa.RSAPublicKey, signing_input: bytes, signature: bytes
) -> bool:
    if algorithm == "RS256":
        scheme: padding.AsymmetricPadding = padding.PKCS1v15()
    elif algorithm == "PS256":  # MSAL signs with PS256 when given the certificate instead of a thumbprint
        scheme = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    else:
        return False
    try:
        public_key.verify(signature, signing_input, scheme, hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _thumbprint_hex(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return b64url_decode(value).hex()
    except ValueError:
        return None
