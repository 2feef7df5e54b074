"""Summaries of py-spy's collapsed stacks (``metacart.bench.profile``)."""

from __future__ import annotations

import pytest

from metacart.bench import profile

RAW = """\
main (metacart/cli.py:10);run_forever (asyncio/base_events.py:607);decide (streams/agents/ads.py:148);process_many (streams/ads_engine.py:165);model_dump_json (pydantic/main.py:587) 6
main (metacart/cli.py:10);run_forever (asyncio/base_events.py:607);decide (streams/agents/ads.py:148);process_many (streams/ads_engine.py:165);decide_many (policy/adapter.py:90);<built-in> (<native>) 3
main (metacart/cli.py:10);run_forever (asyncio/base_events.py:607);select (selectors.py:468) 1

"""


def test_parse_reads_frames_outermost_first_and_counts():
    stacks = profile.parse_collapsed(RAW)
    assert [c for _, c in stacks] == [6, 3, 1]
    assert stacks[0][0][0] == ("main", "metacart/cli.py")
    assert stacks[0][0][-1] == ("model_dump_json", "pydantic/main.py")


def test_self_time_goes_to_the_innermost_known_part():
    parts = profile.self_time_by_part(profile.parse_collapsed(RAW))
    # The native leaf of the second stack is charged to its caller in policy/; selectors.py is nobody's,
    # so the third stack goes to the event loop that called it.
    assert parts == {"decoding and encoding": 0.6, "policy (serving maths)": 0.3, "asyncio": 0.1}
    assert sum(parts.values()) == pytest.approx(1.0)


def test_inclusive_counts_each_stack_once_and_drops_the_ubiquitous():
    top = profile.inclusive_by_function(profile.parse_collapsed(RAW), below=0.95)
    assert "main (metacart/cli.py)" not in top  # in every sample
    assert top["process_many (streams/ads_engine.py)"] == 0.9
    assert top["decide_many (policy/adapter.py)"] == 0.3


@pytest.mark.parametrize("path, part", [
    ("faust/streams.py", "faust stream machinery"), ("/x/site-packages/aiokafka/conn.py", "aiokafka"),
    ("streams/pending.py", "engine bookkeeping"), ("streams/outcome_book.py", "engine bookkeeping"),
    ("streams/pairs.py", "engine bookkeeping"), ("kernels/posterior.py", "numpy/numba kernels"),
    ("unknown/thing.py", None)])
def test_part_of(path, part):
    assert profile.part_of(path) == part
