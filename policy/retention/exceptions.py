"""Exceptions raised by ``policy.retention``."""

from __future__ import annotations

from policy.exceptions import PolicyError


class RetentionError(PolicyError):
    """Base class of the errors raised on purpose by ``policy.retention``."""


class BudgetStateError(RetentionError, ValueError):
    """A serialised budget state or budget configuration is malformed."""


class RiskModelError(RetentionError, ValueError):
    """A churn-risk model file is missing, malformed or inconsistent with its inputs."""
