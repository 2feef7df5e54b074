"""What the ad agent keeps between a decision and its reward: one ``Pending`` record per request.

A pending record holds exactly what the posterior update needs (the chosen ad's features phi, the
segment, the decision's event time) plus what arrived so far (a click, purchase value). It lives in a
RocksDB-backed Faust table keyed by request id until the attribution window closes, so a restarted
worker still applies late clicks and closes windows it opened before the crash.

Encoding: a fixed header (``struct``) + UTF-8 strings + phi as little-endian float64. No pickle.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import numpy as np

_HEADER = struct.Struct("<BdidBHHH")  # version, decided_t, partition, value, clicked, |seg|, |ad|, d
_VERSION = 1


@dataclass(frozen=True)
class Pending:
    """A decision waiting for its reward.

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
    """

    segment: str
    ad_id: str
    partition: int
    decided_t: float
    phi: np.ndarray
    clicked: bool = False
    value: float = 0.0

    def with_click(self) -> "Pending":
        return replace(self, clicked=True)

    def with_value(self, value: float) -> "Pending":
        return replace(self, value=self.value + value)

    def encode(self) -> bytes:
        seg = self.segment.encode()
        ad = self.ad_id.encode()
        phi = np.ascontiguousarray(self.phi, dtype="<f8")
        head = _HEADER.pack(_VERSION, self.decided_t, self.partition, self.value, self.clicked,
                            len(seg), len(ad), phi.shape[0])
        return head + seg + ad + phi.tobytes()

    @classmethod
    def decode(cls, raw: bytes) -> "Pending":
        version, decided_t, partition, value, clicked, n_seg, n_ad, d = _HEADER.unpack_from(raw)
        if version != _VERSION:
            raise ValueError(f"pending record version {version} is not {_VERSION}")
        at = _HEADER.size
        segment = raw[at:at + n_seg].decode()
        at += n_seg
        ad_id = raw[at:at + n_ad].decode()
        at += n_ad
        phi = np.frombuffer(raw, dtype="<f8", count=d, offset=at).copy()
        return cls(segment, ad_id, partition, decided_t, phi, bool(clicked), value)
