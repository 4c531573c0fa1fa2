"""The relay standing in for the app's public front end now lives in ``devkit/relay.py`` (the demo uses it
too); re-exported here for the e2e tests."""

from __future__ import annotations

from devkit.relay import Relay

__all__ = ["Relay"]
