"""CRM ⇄ Microsoft 365 sync: pure domain, services (use cases) and adapters (I/O)."""
