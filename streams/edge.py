"""The edge: raw Kafka bytes become a validated event, or a dead-letter record that explains why not.

Nothing is dropped silently: every input message yields exactly one of the two. The reason is a short
machine-readable ``error_type`` (``oversize``, ``not_json``, ``unknown_schema_version``, ``invalid``)
plus a human-readable message; the original key and value bytes travel with it, base64-encoded.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from streams.events import SCHEMA_VERSION, DeadLetter

T = TypeVar("T")

DEFAULT_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Source:
    """Where a message came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None


class Decoder(Generic[T]):
    """Validates raw bytes against one payload type (a model or a discriminated union)."""

    def __init__(self, payload: Any, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._adapter: TypeAdapter[T] = TypeAdapter(payload)
        self.max_bytes = max_bytes

    def decode_one(self, raw: bytes | None, source: Source) -> T | DeadLetter:
        """Return the validated event, or the ``DeadLetter`` describing why it is not one."""
        if raw is None:
            return dead_letter(b"", source, "invalid", "message has no value (tombstone)")
        if len(raw) > self.max_bytes:
            return dead_letter(raw, source, "oversize",
                               f"{len(raw)} bytes exceeds the limit of {self.max_bytes}")
        try:
            return self._adapter.validate_json(raw)
        except ValidationError as exc:
            return dead_letter(raw, source, *_classify(raw, exc))


def _classify(raw: bytes, exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        return "not_json", f"not valid JSON: {errors[0]['msg']}"
    version_errors = [e for e in errors if e["loc"][-1:] == ("schema_version",)]
    if version_errors:
        try:
            seen = json.loads(raw).get("schema_version")
        except (ValueError, AttributeError):
            seen = None
        if seen is not None:
            return "unknown_schema_version", (
                f"schema_version {seen!r} is not supported (this worker reads {SCHEMA_VERSION})")
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:10]]
    more = f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""
    return "invalid", "; ".join(parts) + more


def dead_letter(raw: bytes, source: Source, error_type: str, reason: str) -> DeadLetter:
    """Build the dead-letter record for ``raw`` (kept byte for byte, base64-encoded)."""
    return DeadLetter(
        reason=reason[:4096],
        error_type=error_type,
        source_topic=source.topic,
        source_partition=source.partition,
        source_offset=source.offset,
        original_key_b64=base64.b64encode(source.key).decode() if source.key is not None else None,
        original_b64=base64.b64encode(raw).decode(),
        failed_at=datetime.now(timezone.utc),
    )


def original_bytes(letter: DeadLetter) -> bytes:
    """The message value exactly as it arrived."""
    return base64.b64decode(letter.original_b64)
