"""The lifecycle every sandbox server shares: bind, serve in a thread, stop cleanly.

A subclass implements :meth:`SandboxServer._bind` (make its ``ThreadingHTTPServer``) and,
if it keeps connections alive, :meth:`SandboxServer._drop_connections`.
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Self


class SandboxServer:
    """A local HTTP server in a daemon thread; a context manager; restartable."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        #: Set while stopping, so handlers sleeping on a "slow" fault wake up.
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _bind(self) -> ThreadingHTTPServer:
        raise NotImplementedError

    def _drop_connections(self, server: ThreadingHTTPServer) -> None:
        """Close kept-alive connections, so a stopped server really is unreachable."""

    def start(self) -> Self:
        """Bind and serve; returns ``self``. Restarting after :meth:`stop` keeps the port."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        self._stopping.clear()
        self._server = self._bind()
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and wake delayed answers; idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        self._drop_connections(server)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        host, port = self._server.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def __repr__(self) -> str:
        state = self.url if self._server is not None else "stopped"
        return f"<{type(self).__name__} {state}>"
