"""Graph's calls to the webhook and lifecycle endpoints.

For now only the validation handshake: when a subscription is created (or its notification URL changes),
Graph POSTs ``…?validationToken=<token>`` and expects, within 10 seconds, ``200 text/plain`` with the token
URL-decoded and nothing else. The token holds spaces and colons, so it must be the decoded query value, never
the raw query string. Receiving change and lifecycle notifications (clientState checks, queuing work) is the
webhook feature's part and joins this module there.
"""

from __future__ import annotations

from sync_core.errors import InvalidRequestError

# Graph's tokens are about a hundred characters; anything far longer is not Graph.
MAX_VALIDATION_TOKEN_LENGTH = 1024


def validation_response(token: str) -> str:
    """The body to answer a validation request with: the (already URL-decoded) token itself."""
    if not token or len(token) > MAX_VALIDATION_TOKEN_LENGTH:
        raise InvalidRequestError(
            "not a validation request", {"validationToken": "must be 1-1024 characters"}
        )
    return token
