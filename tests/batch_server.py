"""A small OpenAI-compatible Files + Batches server on 127.0.0.1 (http.server) for batch-backend tests.

It records every upload and batch creation, answers each request line with a deterministic
completion (valid JSON when the request asks for a JSON schema), and keeps batches
`in_progress` until `release()` is called, so a test can kill a run while a batch is pending."""
from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class BatchServer:
    def __init__(self, hold: bool = True, fail: bool = False):
        self.hold = hold
        self.fail = fail  # batches end `failed` (validation error) instead of answering
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.uploads = 0
        self.creations = 0
        self.polls = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, body: bytes | dict, ctype: str = "application/json"):
                data = json.dumps(body).encode() if isinstance(body, dict) else body
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.path.split("?")[0]
                with server.lock:
                    if path == "/v1/batches":
                        return self._send(200, {"data": list(server.batches.values())[::-1], "has_more": False})
                    if path.startswith("/v1/batches/"):
                        server.polls += 1
                        b = server.batches.get(path.rsplit("/", 1)[1])
                        return self._send(200, b) if b else self._send(404, {"error": {"message": "no batch"}})
                    if path.startswith("/v1/files/") and path.endswith("/content"):
                        fid = path.split("/")[3]
                        if fid in server.files:
                            return self._send(200, server.files[fid], "application/jsonl")
                return self._send(404, {"error": {"message": f"no route {path}"}})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server.lock:
                    if self.path == "/v1/files":
                        msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(
                            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                        content = next(p.get_payload(decode=True) for p in msg.iter_parts()
                                       if p.get_filename())
                        server.uploads += 1
                        fid = f"file-{len(server.files)}"
                        server.files[fid] = content
                        return self._send(200, {"id": fid, "object": "file", "purpose": "batch"})
                    if self.path == "/v1/batches":
                        req = json.loads(body)
                        server.creations += 1
                        bid = f"batch-{len(server.batches)}"
                        server.batches[bid] = {"id": bid, "object": "batch", "status": "in_progress",
                                               "input_file_id": req["input_file_id"], "output_file_id": None,
                                               "error_file_id": None, "endpoint": req["endpoint"]}
                        if not server.hold:
                            server._finish(bid)
                        return self._send(200, server.batches[bid])
                return self._send(404, {"error": {"message": f"no route {self.path}"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _finish(self, bid: str) -> None:
        b = self.batches[bid]
        if self.fail:
            b.update(status="failed", errors={"data": [{"code": "invalid", "message": "model not found"}]})
            return
        lines = []
        for line in self.files[b["input_file_id"]].decode().splitlines():
            req = json.loads(line)
            body = req["body"]
            text = (json.dumps({"question": f"q {req['custom_id']}", "answer": "a"})
                    if "response_format" in body else f"answer to {req['custom_id']}")
            lines.append(json.dumps({"id": "r", "custom_id": req["custom_id"], "error": None, "response": {
                "status_code": 200, "request_id": "x", "body": {
                    "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 3}}}}))
        out = f"file-{len(self.files)}"
        self.files[out] = ("\n".join(lines) + "\n").encode()
        b.update(status="completed", output_file_id=out)

    def release(self) -> None:
        with self.lock:
            self.hold = False
            for bid, b in self.batches.items():
                if b["status"] == "in_progress":
                    self._finish(bid)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
