"""Pseudonymous user ids: the raw id is replaced at the edge, before anything is stored, decided or sent.

``pseudonym = key_id + "." + hex(HMAC-SHA-256(key, user_id))[:32]`` (128 bits; 35 characters, a valid
``Id``). The same key gives the same pseudonym in every worker and after every restart, so per-user
state, decision ids, the never-contact list and outcomes all meet in pseudonym space. Without the key a
pseudonym cannot be computed from a guessed id (unlike a plain hash of a small id space). The shop, which
holds the key, maps pseudonyms in retention actions back to its users.

What is replaced: ``user_id`` of every validated input event (ad requests, session events, outcomes,
erasure requests), and in dead letters the message key of user-keyed topics plus every ``"user_id"``
string inside the original bytes (malformed input too, wherever that field is still recognisable).
Key rotation: see docs/SECURITY.md (a new ``key_id`` with a new key; old pseudonyms age out).
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
from functools import lru_cache
from typing import TypeVar

import msgspec
from pydantic import SecretStr

from streams.edge import rebuild_letter
from streams.events import DeadLetter
from streams.exceptions import StreamsError
from streams.settings import Settings
from streams.topics import Topics

DIGEST_HEX = 32
_USER_FIELD = re.compile(rb'("user_id"\s*:\s*")((?:[^"\\]|\\.)*)(")')
_OPEN_USER_FIELD = re.compile(rb'"user_id"\s*:\s*"(?:[^"\\]|\\.)*\\?\Z')  # a user_id cut off by truncation
E = TypeVar("E")


class PrivacyConfigError(StreamsError):
    """Pseudonymisation is on but no usable key is configured."""


class Pseudonyms:
    """Keyed pseudonyms of user ids (see the module docstring for the formula)."""

    def __init__(self, key: bytes, key_id: str = "k1", user_topics: frozenset[str] = frozenset()) -> None:
        if len(key) < 32:
            raise PrivacyConfigError("the pseudonym key must have at least 32 bytes")
        self.key_id = key_id
        self.user_topics = user_topics
        self._key = key
        self.of = lru_cache(maxsize=1 << 16)(self._of)

    def _of(self, user_id: str) -> str:
        digest = hmac.digest(self._key, user_id.encode(), "sha256").hex()[:DIGEST_HEX]  # one C call
        return f"{self.key_id}.{digest}"

    def event_one(self, event: E) -> E:
        """``event`` (a model or a wire struct) with its ``user_id`` replaced by the pseudonym (events are
        frozen: a copy)."""
        if isinstance(event, msgspec.Struct):
            return msgspec.structs.replace(event, user_id=self.of(event.user_id))
        return event.model_copy(update={"user_id": self.of(event.user_id)})

    def raw_one(self, raw: bytes) -> bytes:
        """``raw`` with the value of every ``"user_id": "..."`` replaced by its pseudonym."""
        return _USER_FIELD.sub(lambda m: m.group(1) + self.of(_unescape(m.group(2))).encode() + m.group(3), raw)

    def letter_one(self, letter: DeadLetter) -> DeadLetter:
        """A dead letter whose original bytes (and key, for user-keyed topics) carry pseudonyms only.

        A letter from ``streams.edge.dead_letter`` is rebuilt from the whole original value, so its size,
        hash and (when the envelope must truncate) prefix describe the pseudonymised bytes. A letter read
        back from Kafka has only what it holds: a truncated one keeps its prefix up to the last
        ``"user_id"`` field that is cut off, and its size and hash are dropped (they describe raw bytes).
        """
        raw, key = letter._raw, letter._key
        if raw is None:
            return self._held_letter_one(letter)
        if key is not None and letter.source_topic in self.user_topics:
            key = self.of(key.decode("utf-8", "replace")).encode()
        return rebuild_letter(letter, self.raw_one(raw), key)

    def _held_letter_one(self, letter: DeadLetter) -> DeadLetter:
        held = base64.b64decode(letter.original_b64)
        changes: dict = {}
        if letter.original_truncated:
            cut = _OPEN_USER_FIELD.search(held)
            held = held if cut is None else held[:cut.start()]
            changes = {"original_size": None, "original_sha256": None}
        changes["original_b64"] = base64.b64encode(self.raw_one(held)).decode()
        key = letter.original_key_b64
        if key is not None and letter.source_topic in self.user_topics:
            raw_key = base64.b64decode(key).decode("utf-8", "replace")
            changes["original_key_b64"] = base64.b64encode(self.of(raw_key).encode()).decode()
        return letter.model_copy(update=changes)


def _unescape(value: bytes) -> str:
    try:
        return json.loads(b'"' + value + b'"')
    except ValueError:
        return value.decode("utf-8", "replace")


def pseudonyms_for(settings: Settings) -> Pseudonyms | None:
    """The worker's pseudonyms (None when ``privacy.pseudonymise`` is off); a clear error without a key."""
    privacy = settings.privacy
    if not privacy.pseudonymise:
        return None
    try:
        key = privacy.key()
    except ValueError as exc:
        raise PrivacyConfigError(str(exc)) from None
    kafka = settings.kafka
    topics = Topics(kafka.topic_prefix, kafka.segment_partitions, kafka.user_partitions)
    user_topics = frozenset({topics.sessions.name, topics.retention_outcomes.name, topics.erasure_requests.name})
    return Pseudonyms(key, privacy.key_id, user_topics)


def with_run_key(settings: Settings) -> Settings:
    """``settings`` with a random pseudonym key when none is configured (demo, benchmarks: one run owns
    the shop and the workers, and nothing outlives it)."""
    privacy = settings.privacy
    if not privacy.pseudonymise or privacy.pseudonym_key.get_secret_value() or privacy.pseudonym_key_file:
        return settings
    s = settings.model_copy(deep=True)
    s.privacy.pseudonym_key = SecretStr(secrets.token_hex(32))
    return s
