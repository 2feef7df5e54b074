"""``streams.agents.delivery.retrying``: which Kafka errors a data path's commit waits out, and which stop it."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.agents.delivery import COORDINATOR_ERRORS, retrying


def _failing(times: int, code: int):
    calls = []

    def step() -> None:
        calls.append(1)
        if len(calls) <= times:
            raise KafkaException(KafkaError(code))

    return step, calls


def test_a_moved_coordinator_is_waited_out_only_where_asked():
    assert not KafkaError(KafkaError.NOT_COORDINATOR).retriable()  # why COORDINATOR_ERRORS exists
    step, calls = _failing(2, KafkaError.NOT_COORDINATOR)
    retrying(step, timeout_s=10, also=COORDINATOR_ERRORS)
    assert len(calls) == 3
    step, calls = _failing(1, KafkaError.NOT_COORDINATOR)
    with pytest.raises(KafkaException):
        retrying(step, timeout_s=10)
    assert len(calls) == 1


def test_other_errors_stop_at_once_and_a_lasting_one_stops_at_the_timeout():
    step, calls = _failing(1, KafkaError.UNKNOWN_MEMBER_ID)
    with pytest.raises(KafkaException):
        retrying(step, timeout_s=10, also=COORDINATOR_ERRORS)
    assert len(calls) == 1
    step, calls = _failing(100, KafkaError.COORDINATOR_NOT_AVAILABLE)
    with pytest.raises(KafkaException):
        retrying(step, timeout_s=0.6, also=COORDINATOR_ERRORS)
    assert 2 <= len(calls) <= 3
