"""Pure decisions: no I/O, and no azure, msal or requests imports."""
