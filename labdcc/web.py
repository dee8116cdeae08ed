"""The lab DCC's DUIS endpoint: `POST /duis` with a SignedPreCommand request (CV 6) -> 200 and the
LocalCommand response XML, or a 4xx with a one-line text reason. Loopback only, one thread per request."""

from __future__ import annotations

import logging
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vdno.duis.document import MAX_DOCUMENT_BYTES
from vdno.labdcc.dcc import LabDcc
from vdno.labdcc.errors import LabDccError, RequestRefused

LOOPBACK = "127.0.0.1"
PATH = "/duis"

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, dcc: LabDcc) -> None:
        self.dcc = dcc
        super().__init__((LOOPBACK, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "vdno-labdcc"
    timeout = 30  # seconds a connection may stall (e.g. a body shorter than its Content-Length)

    def do_POST(self) -> None:
        if self.path != PATH:
            self._text(HTTPStatus.NOT_FOUND, f"no endpoint {self.path[:80]}; POST {PATH}")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.strip().isdigit():
            self._text(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return
        length = int(length_text)
        if length > MAX_DOCUMENT_BYTES:
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request over {MAX_DOCUMENT_BYTES} bytes")
            return
        body = self.rfile.read(length)
        server = self.server
        assert isinstance(server, _Server)
        try:
            answer = server.dcc.answer_signed_pre_command(body)
        except RequestRefused as exc:
            self._text(HTTPStatus.BAD_REQUEST, f"refused: {exc}")
            return
        except LabDccError as exc:
            self._text(HTTPStatus.INTERNAL_SERVER_ERROR, f"lab DCC failure: {exc}")
            return
        except Exception:
            log.exception("unexpected failure answering %s", PATH)
            self._text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
            return
        self._send(HTTPStatus.OK, "application/xml", answer)

    def do_GET(self) -> None:
        self._text(HTTPStatus.METHOD_NOT_ALLOWED, f"only POST {PATH}", allow=True)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _text(self, status: HTTPStatus, reason: str, allow: bool = False) -> None:
        line = " ".join(reason.split())  # one line
        self._send(status, "text/plain; charset=utf-8", (line + "\n").encode("utf-8"), allow)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes, allow: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", "POST")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"vdno-labdcc: {self.address_string()} {format % args}\n")


class DuisHttpServer:
    """`start()` binds 127.0.0.1:port (0 = a free port), serves in a daemon thread, returns the port."""

    def __init__(self, dcc: LabDcc, port: int = 0) -> None:
        self._dcc = dcc
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        if self._server is not None:
            return self.port
        self._server = _Server(self._port, self._dcc)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="labdcc-http", daemon=True
        )
        self._thread.start()
        return self.port

    @property
    def port(self) -> int:
        if self._server is None:
            raise LabDccError("the DUIS endpoint is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL (the endpoint is `<url>/duis`)."""
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
