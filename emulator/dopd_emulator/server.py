"""The emulator's HTTP endpoint on 127.0.0.1: what Prometheus scrapes, and a small control surface for
tests that need faults a real engine cannot produce on demand.

  GET  /metrics           the engine's exposition (503 while the `stale` fault is on; 500 if the
                          engine loop failed, with the error)
  GET  /control/truth     the ground truth (GroundTruth JSON)
  GET  /control/faults    the faults in force (Faults JSON)
  PUT  /control/faults    replace them: {"omit": [{"family": "vllm:kv_cache_usage_perc", "role": "decode"}],
                          "nan": [...], "stale": false}; 400 names an unknown family
  PUT  /control/replicas  {"prefill": P, "decode": D} with static replicas; 409 when following a cluster
  GET  /healthz           ok
Callers: `emulator.Emulator`.
"""

from __future__ import annotations

import json
import logging
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dopd_emulator.config import Faults

if TYPE_CHECKING:
    from dopd_emulator.emulator import Emulator

log = logging.getLogger(__name__)
_Shape = TypeVar("_Shape", bound=BaseModel)
MAX_BODY_BYTES = 64 * 1024


class ReplicaCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefill: int = Field(..., ge=0, le=1000)
    decode: int = Field(..., ge=0, le=1000)


class ControlError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: EmulatorHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, document: Any) -> None:
        self._send(status, json.dumps(document).encode(), "application/json")

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ControlError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError as exc:
            raise ControlError(HTTPStatus.BAD_REQUEST, f"invalid JSON: {exc}") from exc

    def do_GET(self) -> None:
        emulator = self.server.emulator
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, body, content_type = emulator.scrape(self.headers.get("Accept"))
            self._send(status, body, content_type)
        elif path == "/control/truth":
            self._json(HTTPStatus.OK, emulator.truth().model_dump(mode="json"))
        elif path == "/control/faults":
            self._json(HTTPStatus.OK, emulator.faults.model_dump(mode="json"))
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})

    def do_PUT(self) -> None:
        emulator = self.server.emulator
        path = self.path.split("?", 1)[0]
        try:
            if path == "/control/faults":
                emulator.set_faults(_validated(Faults, self._body()))
                self._json(HTTPStatus.OK, emulator.faults.model_dump(mode="json"))
            elif path == "/control/replicas":
                counts = _validated(ReplicaCounts, self._body())
                emulator.set_static_replicas(counts.prefill, counts.decode)
                self._json(HTTPStatus.OK, counts.model_dump())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})
        except ControlError as exc:
            self._json(exc.status, {"error": str(exc)})
        except (ValueError, TypeError) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except RuntimeError as exc:  # replicas of a cluster-following emulator
            self._json(HTTPStatus.CONFLICT, {"error": str(exc)})


def _validated(shape: type[_Shape], document: Any) -> _Shape:
    try:
        return shape.model_validate(document)
    except ValidationError as exc:
        raise ControlError(HTTPStatus.BAD_REQUEST, str(exc)) from exc


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, emulator: Emulator) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.emulator = emulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up before its answer (a scrape past Prometheus's timeout) is a debug line,
        not a traceback on stderr; anything else is logged with its traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipeError, ConnectionResetError
            log.debug("client %s hung up before its answer", client_address)
            return
        log.exception("error serving %s", client_address)
