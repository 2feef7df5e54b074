"""A finite but absurd ads artifact is refused by its probe batch, against the real broker and worker.

Before the probe, weights x 1e300 loaded fine, were swapped in, and then every batch failed in the kernel
(Faust restarted the agent and committed past the batch: requests got neither a decision nor a dead letter).
"""

from __future__ import annotations

from dataclasses import replace

from policy.artifact import PolicyArtifact
from streams.app import topics_for
from streams.control import publish_policy_update

from .conftest import Reader, json_values, produce, start_worker
from .helpers import market, requests_for

SEGMENT = int(market().heldout_segments[0])


def test_absurd_artifact_is_refused_and_the_current_policy_keeps_deciding_every_request(settings, workers,
                                                                                         tmp_path):
    topics = topics_for(settings)
    decisions = Reader(settings.kafka, topics.ad_decisions.name)
    letters = Reader(settings.kafka, topics.dead_letters.name)
    worker = start_worker(workers, settings)
    v1 = PolicyArtifact.load(settings.policy.artifact)
    absurd = replace(v1, w1=v1.w1 * 1e300, b1=v1.b1 * 1e300, w2=v1.w2 * 1e300, b2=v1.b2 * 1e300,
                     prior_mean=v1.prior_mean * 1e300,
                     meta=v1.meta.model_copy(update={"version": "itest-absurd"}))
    absurd_dir = absurd.save(tmp_path / "absurd")
    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        produce(settings.kafka, topics.ad_requests.name,
                requests_for(SEGMENT, list(range(sent, sent + n)), f"P{sent}"))
        sent += n

    try:
        send(5)
        decisions.wait_for(lambda ms: len(ms) >= 5, 90, "first decisions")
        publish_policy_update(settings, absurd_dir, on_swap="reset")
        letters.wait_for(lambda ms: any(d["error_type"] == "policy_refused" for d in json_values(ms)),
                         30, "refusal")
        refusal = next(d for d in json_values(letters.seen) if d["error_type"] == "policy_refused")
        assert "itest-absurd" in refusal["reason"] and "probe" in refusal["reason"]
        for _ in range(4):
            send(10)
        decisions.wait_for(lambda ms: len(ms) >= sent, 60, "decisions after the refusal")
        seen = json_values(decisions.seen)
        assert {d["policy_version"] for d in seen} == {v1.version}
        ids = [d["request_id"] for d in seen]
        assert len(ids) == len(set(ids)) == sent  # every request decided, once
        letters.poll(1.0)
        assert not [d for d in json_values(letters.seen) if d["error_type"] == "serving_failed"]
    except AssertionError:
        print(worker.log_tail())
        raise
