"""An ASGI app (the gateway's) on real HTTP on loopback, in a thread of the
test process, for third-party clients that speak HTTP themselves.

    with serve_http(build_app(core)) as server:
        client = SomeClient(f"{server.host}:{server.port}")

The socket is bound (to a port the kernel picks) and listening before the
server's thread starts, so no other process can take the port in between,
and the block starts once the server has started.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn


@dataclass(frozen=True)
class Served:
    host: str
    port: int


@contextmanager
def serve_http(app: Any, host: str = "127.0.0.1") -> Iterator[Served]:
    """Serve ``app`` with uvicorn on a free port of ``host`` until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    port = int(sock.getsockname()[1])
    # No websockets: the gateway has none, and importing a websockets backend
    # could warn about its own deprecations.
    config = uvicorn.Config(app, log_level="warning", access_log=False, ws="none",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"uvicorn-{port}", daemon=True)
    thread.start()
    # Started, or dead: a server that failed to start would leave its clients
    # waiting on a socket nobody accepts from.
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield Served(host, port)
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
