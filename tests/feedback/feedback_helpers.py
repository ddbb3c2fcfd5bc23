"""Helpers shared by the feedback tests (the fixtures live in conftest.py).

A uniquely named module rather than ``conftest`` imports: other test folders may have a
``conftest.py`` of their own, and ``from conftest import ...`` would then find theirs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from alignforge.data.records import Candidates
from alignforge.feedback import service
from alignforge.feedback.db import Base, create_schema, make_engine, make_sessionmaker

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "feedback"
PASSWORD = "correct horse battery"
XSS = '<script>window.__pwned = 1; document.title = "PWNED"</script><img src=x onerror="window.__pwned = 2">'
PG_URL = os.environ.get("ALIGNFORGE_TEST_PG_URL")


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "page has no CSRF field"
    return m.group(1)


def hidden(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"page has no hidden field {name!r}"
    return m.group(1)


def candidates(n: int, k: int, prefix: str = "p") -> list[Candidates]:
    return [Candidates(prompt=f"{prefix}{i}: what is {i} + {i}?", responses=[f"answer {j} to {prefix}{i}" for j in range(k)],
                       id=f"{prefix}{i}", policy="runs/w/sft", round=1, sampling={"temperature": 1.0, "top_p": 1.0})
            for i in range(n)]


def seed(url: str, annotators: int = 2, fresh: bool = False) -> None:
    """Schema, an admin 'admin', annotators 'ann0'.., with the same test password."""
    engine = make_engine(url)
    if fresh:
        Base.metadata.drop_all(engine)
    create_schema(engine)
    with make_sessionmaker(engine)() as s:
        service.create_user(s, "admin", PASSWORD, "admin")
        for i in range(annotators):
            service.create_user(s, f"ann{i}", PASSWORD)
    engine.dispose()


def login(client, username: str, password: str = PASSWORD):
    page = client.get("/login")
    r = client.post("/login", data={"username": username, "password": password, "csrf": csrf_of(page.text),
                                    "next": "/"}, follow_redirects=False)
    return r


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``alignforge feedback serve`` in a subprocess on loopback; ``kill9()`` for crash tests."""

    def __init__(self, db_url: str, log: Path):
        self.db_url, self.log, self.port, self.proc = db_url, log, free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> "Server":
        import httpx

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alignforge", "feedback", "serve", "--db", self.db_url, "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not come up in {timeout}s: {self.log.read_text()[-2000:]}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
