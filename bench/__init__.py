"""Benchmarks that print figures (p50/p95/p99, requests per change, peak memory) into results.json."""
