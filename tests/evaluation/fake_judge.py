"""A tiny scripted OpenAI-compatible judge on loopback: /v1/chat/completions answers from a Python function.

`script(body) -> (status, payload)` sees the request body; every request is recorded in `.requests`.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Script = Callable[[dict[str, Any]], tuple[int, Any]]


def completion(text: str | None, top_logprobs: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    """A chat completion payload as vLLM shapes it (logprobs.content[0].top_logprobs when asked for)."""
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if top_logprobs is not None:
        choice["logprobs"] = {"content": [{"token": top_logprobs[0][0], "logprob": top_logprobs[0][1],
                                           "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top_logprobs]}]}
    return {"id": "x", "object": "chat.completion", "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


class FakeJudge:
    def __init__(self, script: Script):
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner._lock:
                    owner.requests.append(body)
                status, payload = owner.script(body)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeJudge":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
