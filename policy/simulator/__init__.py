"""Simulated worlds that policies are meta-trained on and tested against (numpy only)."""

from policy.simulator.market import Market, MarketConfig, Outcomes, Requests

__all__ = ["Market", "MarketConfig", "Outcomes", "Requests"]
