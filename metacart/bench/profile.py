"""Where a worker's time goes: py-spy records it, this module sums the samples.

``py-spy record --format raw`` writes collapsed stacks, one line per distinct stack:
``frame;frame;...;leaf COUNT`` with frames ``function (path:line)``, outermost first. Two views:

- **self time by part**: each stack's samples go to the part (asyncio, Faust, aiokafka, ...) of its
  innermost frame whose file belongs to a known part (C functions show up as their Python caller);
- **inclusive time by function**: a function's share of the samples whose stack contains it (counted once
  per stack even when it recurses).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

PARTS = (
    ("asyncio", ("asyncio/",)),
    ("faust stream machinery", ("faust/streams", "faust/channels", "faust/topics", "faust/agents/",
                                "faust/events", "faust/transport/consumer", "faust/transport/conductor")),
    ("faust tables", ("faust/tables/", "faust/stores/", "rocksdict")),
    ("faust other", ("faust/", "mode/")),
    ("aiokafka", ("aiokafka/", "kafka/")),
    ("confluent-kafka", ("confluent_kafka",)),
    ("numpy/numba kernels", ("numpy/", "numba/", "kernels/")),
    ("decoding and encoding", ("pydantic", "json/", "msgspec", "streams/edge.py", "streams/events.py",
                               "datetime")),
    ("policy (serving maths)", ("policy/",)),
    ("engine bookkeeping", ("streams/ads_engine.py", "streams/pending.py", "streams/outcome_book.py",
                            "streams/pairs.py", "streams/ads_state.py",
                            "streams/retention", "streams/pseudonyms.py")),
    ("agent glue and metrics", ("streams/agents/", "streams/metrics.py", "prometheus_client")),
)
"""(part, path fragments): a frame belongs to the first part one of whose fragments starts its path
(py-spy prints paths relative to ``sys.path``) or follows a ``/`` in it."""

_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_collapsed(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    """[(frames as (function, path), outermost first; samples)] from py-spy's raw output."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            frames.append((m["func"], m["path"]) if m else (frame, ""))
        out.append((frames, int(count)))
    return out


def part_of(path: str) -> str | None:
    for name, needles in PARTS:
        if any(path.startswith(n) or f"/{n}" in path for n in needles):
            return name
    return None


def self_time_by_part(stacks: list[tuple[list[tuple[str, str]], int]]) -> dict[str, float]:
    """Share of all samples per part (innermost frame with a known part; else ``other``), largest first."""
    total = sum(c for _, c in stacks) or 1
    parts: Counter[str] = Counter()
    for frames, count in stacks:
        part = next((p for p in (part_of(path) for _, path in reversed(frames)) if p is not None), "other")
        parts[part] += count
    return {k: round(v / total, 4) for k, v in parts.most_common()}


def inclusive_by_function(stacks: list[tuple[list[tuple[str, str]], int]], top: int = 20,
                          below: float = 0.8) -> dict[str, float]:
    """The ``top`` functions by share of samples whose stack contains them, among those under ``below``
    (the entry points and the event loop that every sample passes through say nothing)."""
    total = sum(c for _, c in stacks) or 1
    seen: Counter[str] = Counter()
    for frames, count in stacks:
        for name in {f"{func} ({_short(path)})" for func, path in frames}:
            seen[name] += count
    shares = ((k, v / total) for k, v in seen.most_common())
    return dict([(k, round(v, 4)) for k, v in shares if v < below][:top])


def _short(path: str) -> str:
    for marker in ("site-packages/", "python3.11/", "/wt-bench/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarise(raw: Path, top: int = 20) -> dict:
    stacks = parse_collapsed(Path(raw).read_text())
    return {"samples": sum(c for _, c in stacks), "self_time_by_part": self_time_by_part(stacks),
            "inclusive_top_functions": inclusive_by_function(stacks, top)}


def record(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen:
    """Start ``py-spy record`` on ``pid`` for ``seconds`` (collapsed stacks to ``out``); returns the process."""
    exe = shutil.which("py-spy") or str(Path(__import__("sys").executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
                             "--format", "raw", "--nonblocking", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
