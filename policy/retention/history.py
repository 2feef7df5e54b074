"""A randomised treatment history of the training segments, written in the shared logged-bandit layout.

The uplift prior is meta-trained by the same :func:`policy.train.train` as the ad policy, so retention
history is logged in the :mod:`policy.logs` layout: ``context`` = engagement features at the decision
point, ``candidates`` = the K = 5 treatment encodings (identical on every row), ``action`` = the treatment
sent, ``reward`` = window value - treatment cost, ``value`` = window purchase value (0 means the user
churned), ``propensity`` = the logging policy's probability of the action.

The logging policy is a randomised experiment (``p_none`` for no treatment, the rest split evenly over the
four treatments), the standard way to learn uplift (Radcliffe & Surry 2011; Ascarza 2018 ran one too).
Torch-free.
"""

from __future__ import annotations

import numpy as np

from policy.logs import LoggedData
from policy.retention.features import features_many, new_states, update_many
from policy.retention.schema import K, treatment_encoding
from policy.simulator.retention import RetentionWorld


def logging_probabilities(p_none: float) -> np.ndarray:
    """float64[K]: the randomised logging policy."""
    probs = np.full(K, (1.0 - p_none) / (K - 1))
    probs[0] = p_none
    return probs


def simulate_history(
    world: RetentionWorld, rounds: int, warmup_rounds: int = 5, seed: int = 0, p_none: float = 0.4
) -> LoggedData:
    """Run ``warmup_rounds`` untreated rounds, then ``rounds`` randomised ones; log the randomised ones.

    Returns
    -------
    LoggedData
        ``rounds * world.n_users`` rows, segment names = ``world.segment_names``.
    """
    rng = np.random.default_rng([seed, 0x1065])
    probs = logging_probabilities(p_none)
    states = update_many(new_states(world.n_users), world.warm_up(warmup_rounds))
    enc = treatment_encoding()
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("segment", "context", "action", "reward", "prop", "value")}
    for _ in range(rounds):
        x = features_many(states, world.decision_time())
        action = rng.choice(K, size=world.n_users, p=probs)
        res = world.run_window(action)
        states = update_many(states, res.events)
        cols["segment"].append(world.segment)
        cols["context"].append(x)
        cols["action"].append(action)
        cols["reward"].append(res.reward)
        cols["prop"].append(probs[action])
        cols["value"].append(res.value)
    n = world.n_users * rounds
    return LoggedData(
        segment=np.concatenate(cols["segment"]),
        segment_names=tuple(world.segment_names),
        context=np.concatenate(cols["context"]),
        candidates=np.broadcast_to(enc, (n, *enc.shape)).copy(),
        action=np.concatenate(cols["action"]),
        reward=np.concatenate(cols["reward"]),
        propensity=np.concatenate(cols["prop"]),
        value=np.concatenate(cols["value"]),
    )


def heldout_split(n_segments: int, n_heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, training) segment indices, each sorted: a seeded random ``n_heldout`` are held out.

    The benchmark and :func:`policy.retention.train.build_artifacts` split the same way, so an artifact
    built with a seed never saw the held-out segments of that seed.
    """
    perm = np.random.default_rng([seed, 7]).permutation(n_segments)
    return np.sort(perm[:n_heldout]), np.sort(perm[n_heldout:])


def training_logs(
    names: list[str],
    params,
    train_idx: np.ndarray,
    users_per_segment: int,
    rounds: int,
    warmup_rounds: int = 5,
    seed: int = 0,
    window_days: int = 7,
) -> LoggedData:
    """The randomised history of the training segments ``train_idx`` (world seeded ``seed + 101``)."""
    from policy.simulator.retention import subset_segments

    world = RetentionWorld([names[i] for i in train_idx], subset_segments(params, train_idx), users_per_segment,
                           seed=seed + 101, window_days=window_days)
    return simulate_history(world, rounds=rounds, warmup_rounds=warmup_rounds, seed=seed)
