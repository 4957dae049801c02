"""A small HTTP server on 127.0.0.1 that answers Cloud Storage JSON API requests with a chosen error, for tests of
how the gs:// store reports failures (the real fake-gcs-server cannot be made to refuse access or fail).

``with FakeGCSErrors("403") as fake:`` then point ``$STORAGE_EMULATOR_HOST`` at ``fake.endpoint``. Every GET and
DELETE answers with ``fake.status`` and ``fake.message`` in Cloud Storage's error body; a resumable upload is
opened (its session URL carries ``upload_id=`` :data:`SESSION`, the capability that must not leak) and its chunk
is refused with 400; ``fake.requests`` records (method, path) of each request.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SESSION = "SESSIONCAPABILITY0123456789"
MESSAGES = {
    401: "Invalid Credentials",
    403: "caller does not have storage.objects.get access to the Google Cloud Storage object",
    404: "Not Found",
    503: "Backend Error",
}


class FakeGCSErrors:
    def __init__(self, status: int = 403) -> None:
        self.status = status
        self.message = MESSAGES.get(status, "error")
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: dict, headers: tuple = ()) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int, message: str) -> None:
                error = {"code": code, "message": message, "errors": [{"message": message, "reason": "fake"}]}
                self._send(code, {"error": error})

            def _body(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:  # noqa: N802 - http.server's names
                fake.requests.append((self.command, self.path))
                self._body()
                self._error(fake.status, fake.message)

            do_DELETE = do_GET  # noqa: N815

            def do_POST(self) -> None:  # noqa: N802
                fake.requests.append((self.command, self.path))
                self._body()
                if "uploadType=resumable" in self.path:
                    location = f"{fake.endpoint}/upload/storage/v1/b/bkt/o?uploadType=resumable&upload_id={SESSION}"
                    return self._send(200, {}, (("Location", location),))
                return self._error(fake.status, fake.message)

            def do_PUT(self) -> None:  # noqa: N802
                fake.requests.append((self.command, self.path))
                self._body()
                self._error(400, "Invalid request: the upload session is closed")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set(self, status: int) -> None:
        self.status, self.message = status, MESSAGES.get(status, "error")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeGCSErrors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
