"""A stateful Microsoft Graph v1.0 emulator: events (and meeting invitations between its mailboxes),
subscriptions, $batch, throttling, contacts, To Do, mail.

``GraphEmulator`` runs it in-process; ``python -m devkit graph`` (``devkit.graph_emulator.cli.main``) alone.
"""

from __future__ import annotations

from devkit.graph_emulator.emulator import GraphEmulator, OutlookError
from devkit.graph_emulator.settings import EmulatorSettings

__all__ = ["EmulatorSettings", "GraphEmulator", "OutlookError"]
