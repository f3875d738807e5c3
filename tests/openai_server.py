"""A small OpenAI-compatible chat server on 127.0.0.1 (http.server) for the HTTP backend's control-flow tests.

It serves /v1/models and /v1/chat/completions with scripted answers (valid JSON when the request
asks for a JSON schema; an answer function may return a whole message, tool_calls or a reasoning
model's `reasoning_content` included, and a `finish_reason` key to send), can
fail its first chat requests with 429 / 500 in turn, can hold each answer for `delay` seconds, and
records every request body and Authorization header it saw."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


def scripted_answer(body: dict) -> str:
    """A deterministic answer per prompt: JSON for a schema request, plain text otherwise."""
    prompt = body["messages"][-1]["content"]
    tag = sum(map(ord, prompt)) % 9973
    if "response_format" in body:
        return json.dumps({"question": f"question {tag}", "answer": tag})
    return f"answer {tag} to a prompt of {len(prompt.split())} words"


class OpenAIServer:
    def __init__(self, model: str = "smollm2-135m", faults: int = 0, delay: float = 0.0,
                 answer: Callable[[dict], str | dict] = scripted_answer, count_reasoning: bool = True):
        self.model = model
        self.count_reasoning = count_reasoning  # report usage.completion_tokens_details.reasoning_tokens
        self.faults = faults  # the first `faults` chat requests fail: 429, 500, 429, ...
        self.delay = delay
        self.answer = answer
        self.injected = {"429": 0, "500": 0}
        self.bodies: list[dict] = []  # every chat request answered 200
        self.auth: list[str | None] = []  # the Authorization header of every chat request
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.split("?")[0] == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                return self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with server.lock:
                    server.auth.append(self.headers.get("Authorization"))
                    n = sum(server.injected.values())
                    fault = "429" if n < server.faults and n % 2 == 0 else "500" if n < server.faults else None
                    if fault:
                        server.injected[fault] += 1
                if fault == "429":
                    return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0.05"})
                if fault == "500":
                    return self._send(500, {"error": {"message": "internal error"}})
                if body.get("model") != server.model:
                    return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    answer = server.answer(body)  # a text, or a whole message (e.g. with tool_calls)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                        server.bodies.append(body)
                message = dict(answer) if isinstance(answer, dict) else {"role": "assistant", "content": answer}
                finish = message.pop("finish_reason", None) or ("tool_calls" if message.get("tool_calls") else "stop")
                text = message.get("content") or ""
                thought = len(str(message.get("reasoning_content") or message.get("reasoning") or "").split())
                prompt_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
                usage = {"prompt_tokens": prompt_words, "completion_tokens": len(text.split()) + thought}
                if thought and server.count_reasoning:
                    usage["completion_tokens_details"] = {"reasoning_tokens": thought}
                return self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": server.model,
                                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                                        "usage": usage})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> "OpenAIServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
