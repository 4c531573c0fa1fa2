"""``python -m devkit.graph_emulator`` (``python -m devkit graph`` is wired to ``cli.main`` as well)."""

from __future__ import annotations

from devkit.graph_emulator.cli import main

raise SystemExit(main())
