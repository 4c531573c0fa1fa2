"""Minimal RS256 JSON Web Tokens for the devkit emulators (the identity emulator signs, Graph verifies).

Only what the emulators need: sign claims with an RSA key, publish it as a JWK, verify a token against a JWK
set with audience and expiry checks. Production code never verifies tokens itself (MSAL and Graph do).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class InvalidTokenError(Exception):
    """The token is malformed, badly signed, expired, or for another audience."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_b64(number: int) -> str:
    return b64url(number.to_bytes((number.bit_length() + 7) // 8, "big"))


@dataclass
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def sign(self, claims: Mapping[str, Any]) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
        )
        signature = self.private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(signature)

    def jwk(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": _int_b64(numbers.n),
            "e": _int_b64(numbers.e),
        }


def unverified_claims(token: str) -> dict[str, Any]:
    try:
        _header, payload, _signature = token.split(".")
        claims = json.loads(b64url_decode(payload))
    except (ValueError, json.JSONDecodeError) as exc:
        raise InvalidTokenError("malformed token") from exc
    if not isinstance(claims, dict):
        raise InvalidTokenError("malformed token")
    return claims


def verify(
    token: str,
    jwks: Sequence[Mapping[str, str]],
    *,
    audiences: Sequence[str],
    now: float | None = None,
    leeway: float = 30.0,
) -> dict[str, Any]:
    """Return the claims of a valid token, or raise ``InvalidTokenError`` saying why not."""
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = json.loads(b64url_decode(header_b64))
        signature = b64url_decode(signature_b64)
    except (ValueError, json.JSONDecodeError) as exc:
        raise InvalidTokenError("malformed token") from exc
    if not isinstance(header, dict) or header.get("alg") != "RS256":
        raise InvalidTokenError("unsupported algorithm")
    key = next((k for k in jwks if k.get("kid") == header.get("kid")), None)
    if key is None:
        raise InvalidTokenError("unknown signing key")
    public_key = rsa.RSAPublicNumbers(
        int.from_bytes(b64url_decode(key["e"]), "big"), int.from_bytes(b64url_decode(key["n"]), "big")
    ).public_key()
    try:
        public_key.verify(
            signature, f"{header_b64}.{payload_b64}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature as exc:
        raise InvalidTokenError("bad signature") from exc
    claims = unverified_claims(token)
    current = time.time() if now is None else now
    if not isinstance(claims.get("exp"), int | float) or claims["exp"] + leeway < current:
        raise InvalidTokenError("token expired")
    if claims.get("nbf") is not None and claims["nbf"] - leeway > current:
        raise InvalidTokenError("token not yet valid")
    if claims.get("aud") not in audiences:
        raise InvalidTokenError("wrong audience")
    return claims
