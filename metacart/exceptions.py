"""Errors raised by the command line and the demo."""


class MetacartError(Exception):
    """Base of metacart (CLI, demo, benchmarks) errors."""


class UserError(MetacartError):
    """Something the user asked for cannot be done as asked; the message says what to change."""
