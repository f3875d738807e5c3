"""The viewer's HTTP server: the page at `/`, JSON under `/api/`, on 127.0.0.1 only."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qsl, urlparse

from generator.view.app import View
from generator.view.data import RunError


def page() -> bytes:
    return resources.files("generator.view").joinpath("page.html").read_bytes()


def routes(view: View) -> dict[str, Callable[[dict[str, str]], Any]]:
    return {"/api/meta": lambda p: view.meta(), "/api/records": view.records, "/api/record": view.record,
            "/api/neighbours": view.neighbours, "/api/clusters": view.clusters, "/api/compare": view.compare,
            "/api/scores": lambda p: view.scores(), "/api/rounds": view.rounds,
            "/api/usage": view.usage}


def make_handler(view: View) -> type[BaseHTTPRequestHandler]:
    table = routes(view)
    html = page()

    class Handler(BaseHTTPRequestHandler):
        server_version = "synthgen-view"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the terminal shows the address only
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj, allow_nan=False, default=str).encode(), "application/json; charset=utf-8")

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            if url.path in ("/", "/index.html"):
                self._send(200, html, "text/html; charset=utf-8")
                return
            fn = table.get(url.path)
            if fn is None:
                self._json(404, {"error": f"no such path {url.path}"})
                return
            try:
                out = fn(dict(parse_qsl(url.query)))
            except (LookupError, RunError, ValueError) as exc:
                self._json(400, {"error": str(exc).strip("'\"")})
                return
            except (RuntimeError, TimeoutError) as exc:
                self._json(503, {"error": str(exc)})
                return
            if out is None:
                self._json(404, {"error": "not found"})
            else:
                self._json(200, out)

    return Handler


def serve(view: View, port: int = 0) -> ThreadingHTTPServer:
    """Bind 127.0.0.1:`port` (0: a free port) and serve in a daemon thread; returns the server."""
    srv = ThreadingHTTPServer(("127.0.0.1", port), make_handler(view))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="view-http", daemon=True).start()
    return srv


def address(srv: ThreadingHTTPServer) -> str:
    host, port = srv.server_address[:2]
    return f"http://{host}:{port}/"
