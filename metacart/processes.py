"""Worker processes started from Python: the demo, the stream benchmark and the integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings, settings_env

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorkerProcess:
    """A real ``metacart worker`` subprocess configured by ``settings``, logging to ``log_path``.

    Several run side by side on one host (demo, benchmarks, tests), so each gets its own free HTTP
    port for ``/metrics``, ``/healthz`` and ``/readyz`` unless ``settings.web_port`` is 0 (off).
    """

    settings: Settings
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        if self.settings.web_port > 0:
            self.settings = self.settings.model_copy(update={"web_port": free_port()})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "metacart.cli", "worker"],
                                         env=settings_env(self.settings, dict(os.environ)),
                                         stdout=log, stderr=log, cwd=REPO, start_new_session=True)
        return self

    @property
    def url(self) -> str:
        """Base URL of the worker's HTTP endpoints."""
        return f"http://127.0.0.1:{self.settings.web_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        """Stop the worker (SIGTERM lets Faust commit and close; SIGKILL after ``timeout_s``)."""
        if not self.alive():
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        """Crash it: SIGKILL, no clean shutdown."""
        self.stop(signal.SIGKILL)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"
