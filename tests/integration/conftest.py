"""Integration fixtures: a throw-away CA the tests trust, and the devkit emulators on real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devkit.identity_emulator import IdentityEmulator
from devkit.jwt import SigningKey
from devkit.tls import CertAuthority


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    """One CA per session; every devkit HTTPS server gets its certificate from it."""
    return CertAuthority(Path(tmp_path_factory.mktemp("devkit-ca")))


@pytest.fixture
def https_session(test_ca: CertAuthority) -> Iterator[requests.Session]:
    """A requests session that trusts ``test_ca`` (hand it to MSAL as ``http_client``).

    ``trust_env`` is off because requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (set on many
    machines, this one included) override ``Session.verify``; loopback needs no proxy or netrc anyway.
    """
    with requests.Session() as session:
        session.trust_env = False
        session.verify = str(test_ca.cert_path)
        yield session


@pytest.fixture(scope="session")
def identity_signing_key() -> SigningKey:
    """One RSA key shared by the session's identity emulators: generating one takes a noticeable while."""
    return SigningKey.generate("devkit-test-key")


@pytest.fixture
def identity_emulator(test_ca: CertAuthority, identity_signing_key: SigningKey) -> Iterator[IdentityEmulator]:
    """A running identity emulator with an empty directory, its own clock and no queued sign-ins."""
    with IdentityEmulator(test_ca, signing_key=identity_signing_key) as emulator:
        yield emulator
