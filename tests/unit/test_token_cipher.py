"""The token cache envelope: encrypted, bound to its user, rotatable."""

from __future__ import annotations

import base64
import os

import pytest

from sync_core.adapters.token_cipher import TokenCipher
from sync_core.config import EncryptionKey, Secret
from sync_core.errors import TokenCacheUnreadableError


def key(key_id: str) -> EncryptionKey:
    return EncryptionKey(key_id, Secret(base64.b64encode(os.urandom(32)).decode()))


CACHE = (
    b'{"RefreshToken": {"x": {"secret": "0.AAAA-refresh"}}, "AccessToken": {"y": {"secret": "eyJhbGciOi"}}}'
)


def test_round_trip_hides_the_plaintext() -> None:
    cipher = TokenCipher([key("k1")])
    sealed = cipher.encrypt(CACHE, user_id="u1")
    assert b"refresh" not in sealed
    assert b"eyJ" not in sealed
    assert cipher.decrypt(sealed, user_id="u1") == CACHE


def test_each_encryption_uses_a_fresh_nonce() -> None:
    cipher = TokenCipher([key("k1")])
    assert cipher.encrypt(CACHE, user_id="u1") != cipher.encrypt(CACHE, user_id="u1")


def test_blob_is_bound_to_its_user() -> None:
    cipher = TokenCipher([key("k1")])
    sealed = cipher.encrypt(CACHE, user_id="u1")
    with pytest.raises(TokenCacheUnreadableError):
        cipher.decrypt(sealed, user_id="u2")


def test_rotation_old_key_decrypts_new_key_encrypts() -> None:
    old, new = key("k1"), key("k2")
    sealed_old = TokenCipher([old]).encrypt(CACHE, user_id="u1")
    rotated = TokenCipher([new, old])
    assert rotated.decrypt(sealed_old, user_id="u1") == CACHE
    assert rotated.key_id_of(rotated.encrypt(CACHE, user_id="u1")) == "k2"
    with pytest.raises(TokenCacheUnreadableError, match="unknown key id 'k1'"):
        TokenCipher([new]).decrypt(sealed_old, user_id="u1")


def test_wrong_key_with_same_id_and_tampering_are_refused() -> None:
    sealed = TokenCipher([key("k1")]).encrypt(CACHE, user_id="u1")
    with pytest.raises(TokenCacheUnreadableError):
        TokenCipher([key("k1")]).decrypt(sealed, user_id="u1")
    cipher = TokenCipher([key("k1")])
    altered = bytearray(cipher.encrypt(CACHE, user_id="u1"))
    altered[-1] ^= 1
    with pytest.raises(TokenCacheUnreadableError):
        cipher.decrypt(bytes(altered), user_id="u1")
    for junk in (b"", b"TC1", b"XYZ\x02k1" + b"\0" * 40):
        with pytest.raises(TokenCacheUnreadableError):
            cipher.decrypt(junk, user_id="u1")
