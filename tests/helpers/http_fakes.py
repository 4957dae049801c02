"""Plumbing shared by the fake API servers of the tests: a quiet JSON request handler and a local server.

``JsonHandler`` gives handlers ``_reply`` (raw bytes), ``_send`` (JSON), ``_status`` (a Kubernetes
``Status`` failure body) and ``_body`` (the request's JSON, None when absent or invalid).
``LocalServer`` runs a handler class in a ``ThreadingHTTPServer`` on 127.0.0.1 (port chosen by the OS)
in a daemon thread, https when given ``tls=(certfile, keyfile)``; it is a context manager with ``url``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes ``Status`` failure body, as the API server answers errors."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers JSON."""

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _reply(self, code: int, content_type: str, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, code: int, body: Any) -> None:
        self._reply(code, "application/json", json.dumps(body).encode())

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(code, status_body(code, reason, message))

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            return None


class LocalServer:
    """A threaded HTTP(S) server on 127.0.0.1: ``with LocalServer(Handler) as s: s.url``.

    Subclasses whose handler needs the server override :meth:`_make_handler` instead of passing one.
    """

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler] | None = None,
        *,
        tls: tuple[str, str] | None = None,
        name: str = "local-http-server",
    ) -> None:
        self.tls = tls  # (certfile, keyfile): serve https
        self._handler = handler
        self._name = name
        self._httpd: ThreadingHTTPServer | None = None

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        assert self._handler is not None, "no handler class given"
        return self._handler

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self."""
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._httpd.daemon_threads = True
        if self.tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name=self._name, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"
