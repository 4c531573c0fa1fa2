"""Local development and test kit: Azurite runner, local Functions host, and emulators. Never deployed."""
