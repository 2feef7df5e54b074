"""Errors raised by the streams layer."""


class StreamsError(Exception):
    """Base of metacart.streams errors."""


class BrokerUnavailable(StreamsError):
    """No Kafka broker answered in time."""


class BrokerRefused(BrokerUnavailable):
    """The broker answered but refused this client: authentication, TLS trust or an ACL (for callers that
    only ask whether the broker can be used, a kind of ``BrokerUnavailable``)."""


class PolicyRefused(StreamsError):
    """A policy-update pointed at an artifact that failed validation; the old policy keeps serving."""


class StateFormatError(StreamsError):
    """Stored state in a format this worker does not read (e.g. a block of a newer format version)."""
