"""Start `kilotok serve` as a child process for a benchmark, wait until it is ready, and stop it after.

The server's output goes to a log file rather than a pipe (a pipe nobody reads fills up and blocks the
server mid-benchmark); when the server dies or never gets ready, the error quotes the log's tail.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from kilotok.errors import KilotokError

LOG_TAIL_LINES = 30


class ServerStartError(KilotokError):
    """The benchmarked server exited, or did not answer /health in time."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_healthy(base_url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def serve_command(
    model: str, dtype: str, spec: str, port: int, max_num_seqs: int, extra_args: str = ""
) -> list[str]:
    return [
        sys.executable, "-m", "kilotok.cli.main", "serve", "--model", model, "--dtype", dtype, "--spec", spec,
        "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(max_num_seqs),
        *shlex.split(extra_args),
    ]


class ServerProcess:
    """A running `kilotok serve`; use as a context manager so it is stopped however the benchmark ends."""

    def __init__(self, command: list[str], base_url: str) -> None:
        self.command = command
        self.base_url = base_url
        log_fd, log_name = tempfile.mkstemp(prefix="kilotok-bench-serve-", suffix=".log")
        self.log_path = Path(log_name)
        with os.fdopen(log_fd, "wb") as log:
            # A session of its own: the terminal's Ctrl-C reaches the benchmark, which then stops the server.
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_until_healthy(self, timeout_s: float, poll_s: float = 0.5) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"the server exited with status {self.process.returncode} before it was ready.\n"
                    f"command: {shlex.join(self.command)}\nlast lines of its output:\n{self.log_tail()}"
                )
            if is_healthy(self.base_url):
                return
            time.sleep(poll_s)
        raise ServerStartError(
            f"the server did not answer {self.base_url}/health within {timeout_s:.0f} s "
            f"(raise --server-timeout if loading is just slow).\ncommand: {shlex.join(self.command)}\n"
            f"last lines of its output:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (the server finishes or cancels what runs, then exits), SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
