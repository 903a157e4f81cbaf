"""The one threaded HTTP test server the crawler tests build their local sites on.

``with HttpServer(on_get) as server``: a ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) in a
daemon thread, base URL ``server.base``; ``on_get(request)`` answers every GET, usually with
``request.reply(status, content_type, body)``. Subclasses may override ``on_get`` instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class Request(BaseHTTPRequestHandler):
    """One GET, handed to the server's ``on_get``; quiet (no access log on stderr)."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.on_get(self)

    def reply(self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Send ``body`` with Content-Type, Content-Length and then ``headers``."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still running (a slow response) never holds up shutdown

    def __init__(self, on_get: Callable[[Request], None]) -> None:
        self.on_get = on_get
        super().__init__(("127.0.0.1", 0), Request)


class HttpServer:
    """A context manager serving ``on_get`` (or the subclass's ``on_get``) on ``self.base``."""

    def __init__(self, on_get: Callable[[Request], None] | None = None) -> None:
        self._httpd = _Server(on_get or self.on_get)
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def on_get(self, request: Request) -> None:
        raise NotImplementedError("pass on_get or override it")

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
