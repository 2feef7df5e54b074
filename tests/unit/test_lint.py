"""pyflakes over the whole tree: undefined names, unused imports and variables fail the suite."""

from __future__ import annotations

from pathlib import Path

from pyflakes.api import checkPath
from pyflakes.reporter import Reporter

ROOT = Path(__file__).resolve().parents[2]


class _Collect(Reporter):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def unexpectedError(self, filename: str, message: str) -> None:
        self.messages.append(f"{filename}: {message}")

    def syntaxError(self, filename: str, msg: str, lineno: int, offset: int, text: str) -> None:
        self.messages.append(f"{filename}:{lineno}: {msg}")

    def flake(self, message: object) -> None:
        self.messages.append(str(message))


def test_no_pyflakes_warnings():
    report = _Collect()
    for package in ("kernels", "policy", "streams", "metacart", "tests"):
        for path in sorted((ROOT / package).rglob("*.py")):
            checkPath(str(path), report)
    assert not report.messages, "\n".join(report.messages)
