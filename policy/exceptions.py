"""Exceptions raised by the ``policy`` package.

Every error the package raises on purpose derives from :class:`PolicyError`, so a caller can catch the
package's failures without catching programming errors elsewhere.
"""

from __future__ import annotations


class PolicyError(Exception):
    """Base class of the errors raised on purpose by ``policy``."""


class LogFormatError(PolicyError, ValueError):
    """A logged-bandit file or :class:`~policy.logs.LoggedData` breaks the documented layout.

    Parameters
    ----------
    field
        The offending field (``"propensity"``, ``"context"``, …) or ``"file"`` when the file as a whole
        is unreadable.
    problem
        What is wrong with it, in words.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")
