"""What the ad agent keeps between a decision and its reward, and per segment.

Two records, both in the one ``ads-segments`` table (so both go to the changelog partition of their
segment, in the order they are written):

- ``Pending``: one decision waiting for its reward: what the posterior update needs (the chosen ad's
  features phi, the segment, the decision's event time), the request's offset, and the facts of the
  decision that was sent (position, propensity, scores, version, time), so a replayed request re-emits
  the same decision instead of deciding anew. Pendings are immutable once written; they travel in blocks.
- ``SegmentHead``: the segment's posterior and everything feedback changed, in one value: the number of
  updates applied, clicks applied, zero updates, the event time up to which its windows are closed
  (``closed_through``), and the click/value of its open decisions. A click, a purchase and a window close
  each change the posterior and the mark that makes their replay a no-op in this one record, so they
  cannot be lost or applied twice as long as it is written before the input offsets covering it are
  committed.

Encoding: fixed ``struct`` headers + UTF-8 strings + little-endian float64. No pickle.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field, replace

import numpy as np

# version, decided_t, partition, value, clicked, offset, position, propensity, score, prior_score,
# segment_updates, expected, decided_at, |segment|, |ad|, |policy version|, d
_HEADER = struct.Struct("<BdidBqHdddIddHHHH")
_VERSION = 2


@dataclass(slots=True)
class Pending:
    """A decision waiting for its reward. Never changed in place once made (``with_click`` and ``with_value``
    return new ones); not frozen only because a frozen dataclass costs 1.5 µs more to build, once per decision.

    Attributes
    ----------
    segment, ad_id : str
    partition : int
        Partition of the request (and so of the segment's state).
    decided_t : float
        Event time of the request, seconds since the epoch; the window closes at
        ``decided_t + attribution_window_s`` in event time.
    phi : ndarray, shape (d,)
        Features of the chosen ad under the policy that chose it.
    clicked : bool
        A click already arrived (and, for click rewards, was applied).
    value : float
        Purchase value attributed so far.
    offset : int
        Offset of the request in its partition of ad-requests (-1 when unknown).
    position, propensity, score, prior_score, segment_updates, expected, decided_at, policy_version
        The decision as it was sent (``decided_at`` in seconds since the epoch).
    """

    segment: str
    ad_id: str
    partition: int
    decided_t: float
    phi: np.ndarray
    clicked: bool = False
    value: float = 0.0
    offset: int = -1
    position: int = 0
    propensity: float = 0.0
    score: float = 0.0
    prior_score: float = 0.0
    segment_updates: int = 0
    expected: float = 0.0
    decided_at: float = 0.0
    policy_version: str = ""

    def with_click(self) -> "Pending":
        return replace(self, clicked=True)

    def with_value(self, value: float) -> "Pending":
        return replace(self, value=self.value + value)

    def encode(self) -> bytes:
        seg = self.segment.encode()
        ad = self.ad_id.encode()
        ver = self.policy_version.encode()
        phi = np.ascontiguousarray(self.phi, dtype="<f8")
        head = _HEADER.pack(_VERSION, self.decided_t, self.partition, self.value, self.clicked, self.offset,
                            self.position, self.propensity, self.score, self.prior_score, self.segment_updates,
                            self.expected, self.decided_at, len(seg), len(ad), len(ver), phi.shape[0])
        return head + seg + ad + ver + phi.tobytes()

    @classmethod
    def decode(cls, raw: bytes) -> "Pending":
        (version, decided_t, partition, value, clicked, offset, position, propensity, score, prior, n_upd,
         expected, decided_at, n_seg, n_ad, n_ver, d) = _HEADER.unpack_from(raw)
        if version != _VERSION:
            raise ValueError(f"pending record version {version} is not {_VERSION}")
        at = _HEADER.size
        segment = raw[at:at + n_seg].decode()
        at += n_seg
        ad_id = raw[at:at + n_ad].decode()
        at += n_ad
        policy_version = raw[at:at + n_ver].decode()
        at += n_ver
        phi = np.frombuffer(raw, dtype="<f8", count=d, offset=at).copy()
        return cls(segment, ad_id, partition, decided_t, phi, bool(clicked), value, offset, position, propensity,
                   score, prior, n_upd, expected, decided_at, policy_version)


# version, partition, n_updates, clicks, zero_updates, closed_through, |epoch|, |state|, feedback entries
_HEAD_V1 = struct.Struct("<BiIIIdHII")
# version 2 adds last_seen after closed_through
_HEAD = struct.Struct("<BiIIIddHII")
_FEEDBACK = struct.Struct("<HBd")  # |request id|, clicked, value
_HEAD_VERSION = 2


@dataclass
class SegmentHead:
    """A segment's posterior and the feedback it absorbed, stored as one table value.

    Attributes
    ----------
    epoch : bytes
        Version of the artifact whose prior the posterior grew from.
    state : bytes or None
        The adapter's posterior bytes (None: the segment is at its prior).
    n_updates, clicks, zero_updates : int
        Posterior updates applied; of them clicks (or value rewards) and zero rewards of closed windows.
    closed_through : float
        Every decision of the segment whose window ends at or before this event time is closed.
    feedback : dict
        Request id -> (clicked, value) of the segment's open decisions that received feedback.
    last_seen : float
        Event time of the segment's latest decision or feedback this head covers (``streams.segment_expiry``;
        a head of version 1 reads it as ``closed_through``, which is later than the decisions it closed).
    """

    epoch: bytes
    partition: int
    state: bytes | None = None
    n_updates: int = 0
    clicks: int = 0
    zero_updates: int = 0
    closed_through: float = -math.inf
    feedback: dict[str, tuple[bool, float]] = field(default_factory=dict)
    last_seen: float = -math.inf

    def encode(self) -> bytes:
        state = self.state or b""
        parts = [_HEAD.pack(_HEAD_VERSION, self.partition, self.n_updates, self.clicks, self.zero_updates,
                            self.closed_through, self.last_seen, len(self.epoch), len(state), len(self.feedback)),
                 self.epoch, state]
        for rid, (clicked, value) in self.feedback.items():
            b = rid.encode()
            parts.append(_FEEDBACK.pack(len(b), clicked, value) + b)
        return b"".join(parts)

    @classmethod
    def decode(cls, raw: bytes) -> "SegmentHead":
        version = struct.unpack_from("<B", raw)[0]
        if version == 1:
            _, partition, n_updates, clicks, zeros, closed, n_epoch, n_state, n_fb = _HEAD_V1.unpack_from(raw)
            last_seen, at = closed, _HEAD_V1.size
        elif version == _HEAD_VERSION:
            (_, partition, n_updates, clicks, zeros, closed, last_seen, n_epoch, n_state,
             n_fb) = _HEAD.unpack_from(raw)
            at = _HEAD.size
        else:
            raise ValueError(f"segment record version {version} is not 1 or {_HEAD_VERSION}")
        epoch = bytes(raw[at:at + n_epoch])
        at += n_epoch
        state = bytes(raw[at:at + n_state]) or None
        at += n_state
        feedback = {}
        for _ in range(n_fb):
            n_rid, clicked, value = _FEEDBACK.unpack_from(raw, at)
            at += _FEEDBACK.size
            feedback[raw[at:at + n_rid].decode()] = (bool(clicked), value)
            at += n_rid
        return cls(epoch, partition, state, n_updates, clicks, zeros, closed, feedback, last_seen)

    @staticmethod
    def last_seen_of(raw: bytes) -> tuple[int, float]:
        """``(partition, last_seen)`` of an encoded head, without decoding the rest."""
        if struct.unpack_from("<B", raw)[0] == 1:
            fields = _HEAD_V1.unpack_from(raw)
            return fields[1], fields[5]
        fields = _HEAD.unpack_from(raw)
        return fields[1], fields[6]
