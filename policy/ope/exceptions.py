"""Exceptions raised by :mod:`policy.ope`."""

from __future__ import annotations

from policy.exceptions import PolicyError


class OpeError(PolicyError, ValueError):
    """An off-policy evaluation that cannot be computed as asked (shapes, empty logs, unknown names)."""
