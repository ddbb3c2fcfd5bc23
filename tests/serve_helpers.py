"""`alignforge serve` on localhost for tests: the app under uvicorn in a thread, on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def running_server(cfg) -> Iterator[tuple[object, str]]:
    """Yield ``(server, base_url)`` for a ``ServeConfig``; stop the server and its engine after."""
    import uvicorn

    from alignforge.serving.serve import create_app, load_server

    server = load_server(cfg)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(create_app(server), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not uv.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield server, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        server.engine.close()
        sock.close()
