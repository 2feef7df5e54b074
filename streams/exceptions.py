"""Errors raised by the streams layer."""


class StreamsError(Exception):
    """Base of metacart.streams errors."""


class BrokerUnavailable(StreamsError):
    """No Kafka broker answered in time."""


class BrokerRefused(StreamsError):
    """The broker answered but refused this client: authentication, TLS trust or an ACL."""


class PolicyRefused(StreamsError):
    """A policy-update pointed at an artifact that failed validation; the old policy keeps serving."""
