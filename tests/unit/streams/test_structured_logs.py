"""Worker logs: one JSON object per line, the level a setting, every library through one handler,
repeated messages rate-limited."""

from __future__ import annotations

import io
import json
import logging

import pytest

from streams.settings import Settings
from streams.structured_logs import RDKAFKA_LOGGER, JsonFormatter, RateLimit, configure_logging


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_library_goes_through_one_json_handler(restore_root):
    stream = io.StringIO()
    configure_logging(Settings(log_level="INFO"), "w@host:1", stream)
    logging.getLogger("faust.worker").info("starting %s", "now")
    RDKAFKA_LOGGER.warning("FAIL: connection refused")
    logging.getLogger("metacart.ads").error("policy refused", extra={"partition": 3})
    logging.getLogger("mode").debug("below the level")
    got = _lines(stream)
    assert [(r["logger"], r["level"], r["msg"]) for r in got] == [
        ("faust.worker", "INFO", "starting now"),
        ("librdkafka", "WARNING", "FAIL: connection refused"),
        ("metacart.ads", "ERROR", "policy refused")]
    assert {r["worker"] for r in got} == {"w@host:1"} and got[2]["partition"] == 3
    assert "partition" not in got[0]


def test_level_and_text_format_are_settings(restore_root):
    stream = io.StringIO()
    configure_logging(Settings(log_level="WARNING", log_format="text"), "w@h:2", stream)
    logging.getLogger("faust").info("hidden")
    logging.getLogger("faust").warning("shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("WARNING faust [w@h:2] shown")


def test_exceptions_carry_their_traceback():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), None)
    try:
        raise ValueError("bad")
    except ValueError:
        import sys
        record.exc_info = sys.exc_info()
    body = json.loads(JsonFormatter("w").format(record))
    assert "ValueError: bad" in body["exc"] and body["msg"] == "boom"


def test_rate_limit_drops_repeats_and_says_how_many():
    now = [0.0]
    limit = RateLimit(3, window_s=10.0, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("librdkafka", logging.WARNING, __file__, 1, msg, (), None)

    passed = [limit.filter(record("Connection refused")) for _ in range(50)]
    assert sum(passed) == 3
    assert limit.filter(record("another template"))  # templates are limited separately
    now[0] = 10.0
    first = record("Connection refused")
    assert limit.filter(first) and first.suppressed == 47
    second = record("Connection refused")
    assert limit.filter(second) and not hasattr(second, "suppressed")
    assert all(RateLimit(0).filter(record("x")) for _ in range(100))
