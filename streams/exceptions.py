"""Errors raised by the streams layer."""


class StreamsError(Exception):
    """Base of metacart.streams errors."""


class BrokerUnavailable(StreamsError):
    """No Kafka broker answered in time."""


class PolicyRefused(StreamsError):
    """A policy-update pointed at an artifact that failed validation; the old policy keeps serving."""
