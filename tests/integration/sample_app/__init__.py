"""A sample function app for the devkit host tests (loaded by path, as function_app, by the host)."""
