"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1 for tests (real HTTP, real sockets).

By default it grades like a judge would: a reply containing REFUSE scores 1, COMPLY scores 5, anything else 3.
A script of actions is consumed one per request; once it runs out, the action `then` answers (default: grade):
  ("grade", None)        answer by the default grading rule
  ("status", 500)        answer with that HTTP status (the error message echoes the Authorization header, as a
                         careless server might, so tests can check that clients never repeat it)
  ("delay", 1.5)         sleep that long, then answer by default (a client with a shorter timeout gives up)
  ("content", "text")    answer with this message content
  ("body", b"...")       answer 200 with this raw body (malformed JSON etc.)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def default_content(user_text: str) -> str:
    """The stub's grading rule as a judge reply."""
    reply = user_text.split("[REPLY]", 1)[-1]
    score = 1 if "REFUSE" in reply else 5 if "COMPLY" in reply else 3
    return f"#reason: stub grading of the reply.\n#score: {score}"


class StubJudge:
    """Start with `with StubJudge() as stub:`; `stub.url` is the /v1 base URL."""

    def __init__(self, script: list[tuple[str, Any]] | None = None, *, latency: float = 0.0,
                 then: tuple[str, Any] = ("grade", None)):
        self.script: deque = deque(script or [])
        self.then = then
        self.latency = latency
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Base URL ending in /v1."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "StubJudge":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802 - http.server naming
                stub._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _next_action(self) -> tuple[str, Any] | None:
        with self._lock:
            return self.script.popleft() if self.script else self.then

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            length = int(handler.headers.get("Content-Length", 0))
            body = json.loads(handler.rfile.read(length) or b"{}")
            with self._lock:
                self.requests.append({"path": handler.path, "headers": dict(handler.headers), "body": body})
            action = self._next_action()
            if self.latency:
                time.sleep(self.latency)
            if action and action[0] == "delay":
                time.sleep(action[1])
                action = None
            if action and action[0] == "status":
                echoed = handler.headers.get("Authorization", "")
                message = f"stub status {action[1]} for credentials {echoed}"
                self._send(handler, action[1], json.dumps({"error": {"message": message}}).encode())
                return
            if action and action[0] == "body":
                self._send(handler, 200, action[1])
                return
            user_text = body["messages"][-1]["content"]
            content = action[1] if action and action[0] == "content" else default_content(user_text)
            payload = {"id": "stub", "object": "chat.completion", "model": body.get("model"),
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}]}
            self._send(handler, 200, json.dumps(payload).encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer
        finally:
            with self._lock:
                self.in_flight -= 1

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
