"""Use cases, one per module: gather (adapters) → decide (domain) → apply (adapters)."""
