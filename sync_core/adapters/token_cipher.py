"""AES-256-GCM envelope for the per-user MSAL token cache at rest.

Envelope (bytes): ``b"TC1" | len(key id) (1 byte) | key id (ASCII) | nonce (12 bytes) | ciphertext+tag``.
The key id lets keys rotate: the first configured key encrypts, every configured key decrypts, so users whose
cache was written under an old key keep working and move to the new key on their next token refresh. The
user id is bound as associated data, so one user's blob copied onto another user's row does not decrypt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sync_core.config import EncryptionKey
from sync_core.errors import TokenCacheUnreadableError

_MAGIC = b"TC1"
_NONCE_BYTES = 12


class TokenCipher:
    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        if not keys:
            raise ValueError("at least one token encryption key is required")
        self._current = keys[0]
        self._by_id = {key.key_id: AESGCM(key.raw()) for key in keys}

    @property
    def current_key_id(self) -> str:
        return self._current.key_id

    def encrypt(self, plaintext: bytes, *, user_id: str) -> bytes:
        key_id = self._current.key_id.encode("ascii")
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._by_id[self._current.key_id].encrypt(nonce, plaintext, _associated(user_id))
        return _MAGIC + bytes([len(key_id)]) + key_id + nonce + sealed

    def decrypt(self, envelope: bytes, *, user_id: str) -> bytes:
        key_id, nonce, sealed = _split(envelope)
        aead = self._by_id.get(key_id)
        if aead is None:
            # The id is ours, not secret: naming it tells an operator which key left the setting.
            raise TokenCacheUnreadableError(f"token cache encrypted with unknown key id {key_id!r}")
        try:
            return aead.decrypt(nonce, sealed, _associated(user_id))
        except InvalidTag as exc:
            raise TokenCacheUnreadableError(
                "token cache failed authentication (wrong key or altered)"
            ) from exc

    def key_id_of(self, envelope: bytes) -> str:
        return _split(envelope)[0]


def _associated(user_id: str) -> bytes:
    return b"msal-token-cache:" + user_id.encode("utf-8")


def _split(envelope: bytes) -> tuple[str, bytes, bytes]:
    if len(envelope) < len(_MAGIC) + 1 or not envelope.startswith(_MAGIC):
        raise TokenCacheUnreadableError("not a token cache envelope")
    length = envelope[len(_MAGIC)]
    start = len(_MAGIC) + 1
    key_id = envelope[start : start + length]
    nonce = envelope[start + length : start + length + _NONCE_BYTES]
    sealed = envelope[start + length + _NONCE_BYTES :]
    if len(key_id) != length or len(nonce) != _NONCE_BYTES or len(sealed) < 16:
        raise TokenCacheUnreadableError("truncated token cache envelope")
    try:
        return key_id.decode("ascii"), nonce, sealed
    except UnicodeDecodeError as exc:
        raise TokenCacheUnreadableError("malformed key id in token cache envelope") from exc
