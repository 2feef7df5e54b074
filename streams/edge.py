"""The edge: raw Kafka bytes become a validated event, or a dead-letter record that explains why not.

Nothing is dropped silently: every input message yields exactly one of the two. The reason is a short
machine-readable ``error_type`` plus a human-readable message:

- ``oversize``: more bytes than the decoder's ``max_bytes`` (checked before parsing);
- ``not_json``: not a JSON document (``NaN`` and ``Infinity`` are not JSON numbers);
- ``unknown_schema_version``: a ``schema_version`` this worker does not read;
- ``invalid``: JSON of the wrong shape, type, length, range or pattern; types are strict (no coercion);
- ``key_mismatch``: the Kafka key is not the field the topic is keyed by (``segment`` for the ad topics,
  ``user_id`` for the user topics), so the message sits on a partition that does not own its state.

Decoding uses the msgspec mirrors of the event models (``streams.wire.WIRE``); the decoded event is a
frozen struct with the model's attributes. The dead-letter envelope (``dead_letter``) always fits in one
Kafka message: see ``DEAD_LETTER_MAX_BYTES``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Generic, NamedTuple, TypeVar, get_args

import msgspec
from pydantic import TypeAdapter, ValidationError

from streams.events import SCHEMA_VERSION, AdRequest, DeadLetter
from streams.wire import WIRE

T = TypeVar("T")

DEFAULT_MAX_BYTES = 64 * 1024
DEAD_LETTER_MAX_BYTES = 256 * 1024
"""Default bound on a dead-letter envelope's JSON (librdkafka's ``message.max.bytes`` is 1,000,000)."""
MIN_LETTER_BYTES = 8 * 1024
KEY_PREFIX_BYTES = 1024
"""A message key longer than this is kept as a prefix in the envelope (with its full size)."""

_ENCODER = msgspec.json.Encoder()


class RawMessage(NamedTuple):
    """One consumed message, as the engines need it (a tuple: built once per message on the hot path). It is
    also a valid ``Source`` of itself: ``topic``, ``partition``, ``offset`` and ``key`` are what one names."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Source(NamedTuple):
    """Where a message came from: topic, partition, offset and the Kafka key (None: the message has none)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None


class Decoder(Generic[T]):
    """Decodes raw bytes into one input payload type of ``streams.topics`` (a model or a union of them).

    ``max_bytes`` bounds the message; ``letter_max_bytes`` bounds the dead-letter envelopes it builds.
    msgspec decides what is valid (strictly). ``models`` chooses what comes out: the frozen struct
    (``False``) or the pydantic model, built by pydantic from the same bytes after msgspec accepted them
    (``True``; about 1.7 µs more for a click, ``metacart bench edge``). Default: the struct for
    ``AdRequest`` (the hot path, read through attributes only), the model for the rest (the engines
    dispatch on model classes).
    """

    def __init__(self, payload: Any, max_bytes: int = DEFAULT_MAX_BYTES,
                 letter_max_bytes: int = DEAD_LETTER_MAX_BYTES, models: bool | None = None) -> None:
        wire = next((w for p, w in WIRE.items() if p is payload), None)
        if wire is None:
            raise TypeError(f"no wire struct decodes {payload!r}; streams.wire.WIRE lists the input payloads")
        self._decoder = msgspec.json.Decoder(wire)
        if models is None:
            models = payload is not AdRequest
        self._model: TypeAdapter | None = TypeAdapter(payload) if models else None
        members = get_args(wire) or (wire,)
        self._key_field: str | None = members[0].KEY_FIELD
        self.max_bytes = max_bytes
        self.letter_max_bytes = letter_max_bytes

    def decode_one(self, raw: bytes | None, source: Source | RawMessage) -> T | DeadLetter:
        """Return the decoded event, or the ``DeadLetter`` describing why it is not one."""
        if raw is None:
            return self._dead(b"", source, "invalid", "message has no value (tombstone)")
        if len(raw) > self.max_bytes:
            return self._dead(raw, source, "oversize", f"{len(raw)} bytes exceeds the limit of {self.max_bytes}")
        try:
            event = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            return self._dead(raw, source, *_classify(raw, str(exc)))
        except msgspec.DecodeError as exc:
            return self._dead(raw, source, "not_json", f"not valid JSON: {exc}")
        field = self._key_field
        if field is not None:
            key = source.key
            if key is None:
                return self._dead(raw, source, "key_mismatch", f"the message has no key; this topic is keyed by {field}")
            if key != getattr(event, field).encode():
                # The values are not quoted: for user topics they are user ids, and reasons are not pseudonymised.
                return self._dead(raw, source, "key_mismatch",
                                  f"the message key is not its {field} ({len(key)}-byte key); "
                                  f"this topic is keyed by {field}")
        if self._model is not None:
            try:
                return self._model.validate_json(raw)
            except ValidationError as exc:  # msgspec accepted what the model refuses: a drift between them
                return self._dead(raw, source, "invalid", f"accepted by the wire struct, refused by the model: "
                                  f"{exc.errors(include_url=False, include_input=False)[0]['msg']}")
        return event

    def _dead(self, raw: bytes, source: Source | RawMessage, error_type: str, reason: str) -> DeadLetter:
        return dead_letter(raw, source, error_type, reason, self.letter_max_bytes)


def _classify(raw: bytes, message: str) -> tuple[str, str]:
    if message.endswith("`$.schema_version`"):
        try:
            seen = json.loads(raw).get("schema_version")
        except (ValueError, AttributeError):
            seen = None
        if seen is not None:
            return "unknown_schema_version", (
                f"schema_version {seen!r} is not supported (this worker reads {SCHEMA_VERSION})")
    return "invalid", message


def dead_letter(raw: bytes, source: Source | RawMessage, error_type: str, reason: str,
                max_bytes: int = DEAD_LETTER_MAX_BYTES) -> DeadLetter:
    """The dead-letter record for ``raw``, whose JSON is at most ``max_bytes`` long.

    The original value travels base64-encoded with its size and SHA-256. When the whole of it would push
    the envelope past ``max_bytes``, only its first bytes are kept and ``original_truncated`` says so; a key
    longer than ``KEY_PREFIX_BYTES`` is cut the same way (``original_key_truncated``). The full value stays
    on the record (not serialised) so that pseudonymisation (``Pseudonyms.letter_one``) can rebuild it.
    """
    if max_bytes < MIN_LETTER_BYTES:
        raise ValueError(f"a dead-letter bound of {max_bytes} bytes is below the minimum of {MIN_LETTER_BYTES}")
    key = source.key
    letter = DeadLetter(
        reason=reason[:4096],
        error_type=error_type[:64],
        source_topic=source.topic[:255],
        source_partition=source.partition,
        source_offset=source.offset,
        original_key_b64=base64.b64encode(key[:KEY_PREFIX_BYTES]).decode() if key is not None else None,
        original_key_truncated=key is not None and len(key) > KEY_PREFIX_BYTES,
        original_b64="",
        original_size=len(raw),
        original_sha256=hashlib.sha256(raw).hexdigest(),
        failed_at=datetime.now(timezone.utc),
    )
    fixed = len(letter.model_dump_json().encode())
    while fixed > max_bytes // 2:  # a reason of 4,096 escaped characters can take 24 KB: halve it until it fits
        letter = letter.model_copy(update={"reason": letter.reason[: len(letter.reason) // 2]})
        fixed = len(letter.model_dump_json().encode())
    room = max_bytes - fixed
    keep = len(raw) if 4 * -(-len(raw) // 3) <= room else max(0, room // 4 * 3)
    letter = letter.model_copy(update={"original_b64": base64.b64encode(raw[:keep]).decode(),
                                       "original_truncated": keep < len(raw)})
    letter._raw = raw
    letter._key = key
    letter._max_bytes = max_bytes
    return letter


def rebuild_letter(letter: DeadLetter, raw: bytes, key: bytes | None) -> DeadLetter:
    """``letter`` describing other original bytes and key (e.g. pseudonymised), under the same bound."""
    source = Source(letter.source_topic, letter.source_partition, letter.source_offset, key)
    new = dead_letter(raw, source, letter.error_type, letter.reason, letter._max_bytes or DEAD_LETTER_MAX_BYTES)
    return new.model_copy(update={"failed_at": letter.failed_at})


def original_bytes(letter: DeadLetter) -> bytes:
    """The message value as the envelope holds it (all of it unless ``original_truncated``)."""
    return base64.b64decode(letter.original_b64)


def encode_one(record: msgspec.Struct) -> bytes:
    """JSON bytes of an output record (``streams.events.AdDecisionRecord``), as the model would write them."""
    return _ENCODER.encode(record)
