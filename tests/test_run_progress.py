"""`synthgen run`'s progress display: the bar, its ETA and the latest finished record, live on a
terminal and a few plain lines when piped; model output cannot drive the terminal."""
from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from generator.cli import progress
from generator.cli.progress import RunDisplay, latest_panel, safe_text

ROOT = Path(__file__).resolve().parents[1]
# what a hostile or broken model may write: clear screen, recolour, retitle the window, carriage return, bell
NASTY = "line one\x1b[2J\x1b[31m red\x1b[0m\x1b]0;pwned\x07\nline two\rover\x07\nline three\nline four\nline five"


def test_safe_text_drops_escapes_and_shows_controls():
    assert safe_text(NASTY) == "line one red\nline two␍over␇\nline three\nline four\nline five"
    assert safe_text("a\x9b31mb\x1b[?25lc\x1bcd\x7fe\x85") == "abcd␡e\ufffd"
    assert safe_text("tab\there [bold]x[/] :smile:") == "tab    here [bold]x[/] :smile:"


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=100, emoji=False, highlight=False, color_system=None), buf


def test_panel_shows_user_text_literally_and_a_few_lines():
    row = {"text": NASTY, "status": "ok", "topic": "[bold]Arithmetic[/]", "subtopic": ":smile: Addition",
           "template": "qa"}
    c, buf = _console()
    c.print(latest_panel(row, lines=3))
    out = buf.getvalue()
    assert "ok · qa · [bold]Arithmetic[/] / :smile: Addition" in out  # markup and emoji codes stay text
    assert "line one red" in out and "line two␍over␇" in out and "line three" in out
    assert "line four" not in out and "…" in out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out  # colour off: any escape is the model's
    stage = {"text": "draft", "status": "ok", "template": "t", "final": False, "stage": "review"}
    c2, buf2 = _console()
    c2.print(latest_panel(stage))
    assert "stage review" in buf2.getvalue()


def _feed(display: RunDisplay, n: int, total: int | None = None, text=lambda i: f"answer {i}") -> None:
    display("plan", {"records": total or n, "new": total or n, "seconds": 0.01})
    display("start", {"records": total or n, "pending": total or n, "shards": 1, "run_dir": "x", "session": None})
    display("engine_ready", {})
    for i in range(n):
        display("finished", {"n": 1})
        display("record", {"text": text(i), "status": "ok" if i % 3 else "truncated", "topic": "Geometry",
                           "subtopic": "Circles", "template": "qa", "completion_tokens": 10})


def test_live_display_updates_with_each_record():
    c, buf = _console()
    d = RunDisplay(c, {}, live=True)
    _feed(d, 5, total=8)
    assert d.done() == 5 and d.bar.latest["text"] == "answer 4"
    assert d.eta() is not None and d.eta() >= 0
    d.close()
    out = buf.getvalue()
    assert "5/8" in out and "ETA" in out and "latest: ok · qa · Geometry / Circles" in out and "answer 4" in out


def test_piped_output_is_a_few_plain_lines(capsys, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_MIN_GAP_S", 0.0)
    c = Console(file=io.StringIO(), force_terminal=False)
    d = RunDisplay(c, {})
    assert not d.live
    _feed(d, 1000, text=lambda i: NASTY)
    d("done", {"seconds": 1})
    d.close()  # closing twice writes nothing more
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("generating")]
    assert 10 <= len(lines) <= 11, lines  # one per tenth of the plan, not one per record
    assert lines[-1].startswith("generating 1000/1000 records (100%)") and "ETA 0:00:00" in lines[-1]
    # the line of the last record counted shows that record (the 1000th: truncated in this feed)
    assert "latest truncated · qa · Geometry / Circles: line one red" in lines[-1]
    assert all("\x1b" not in x and "\x07" not in x for x in lines)


def test_piped_lines_are_rate_limited(capsys):
    d = RunDisplay(Console(file=io.StringIO(), force_terminal=False), {})
    _feed(d, 500)
    d.close()
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("generating")]
    assert len(lines) <= 2 and lines[-1].startswith("generating 500/500"), lines


def test_retried_answers_never_count_past_the_plan():
    d = RunDisplay(Console(file=io.StringIO(), force_terminal=False), {})
    _feed(d, 4)
    d("finished", {"n": 3})  # three retried requests of records already counted
    assert d.done() == 4


class ChatServer:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 answering NASTY text, the n-th after n x `delay` s."""

    def __init__(self, delay: float):
        served = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._json({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with served.lock:
                    served.calls += 1
                    n = served.calls
                time.sleep(served.delay * n)  # answers land one after another, not all at once
                self._json({"id": "c", "object": "chat.completion", "model": "tiny",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": NASTY}}],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})

        self.delay, self.calls, self.lock = delay, 0, threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def chat_server():
    s = ChatServer(delay=0.3)
    yield s
    s.close()


def _run_args(proj: Path, out: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "generator.cli", "run", str(proj / "spec.yaml"), "--out", str(out),
            "--set", f"models=[{{name: tiny, backend: openai, base_url: '{url}'}}]",
            "--set", "templates=[{template: qa}]"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", "LINES": "40", "TERM": "xterm-256color"}


def test_real_run_under_a_terminal_shows_the_latest_record(proj, tmp_path, chat_server):
    """A real `synthgen run` subprocess on a pseudo-terminal, against a real HTTP server."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(_run_args(proj, tmp_path / "run", chat_server.url), stdin=slave, stdout=slave,
                            stderr=slave, env=_env(), cwd=tmp_path, close_fds=True)
    os.close(slave)
    raw = b""
    deadline = time.time() + 120
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 1.0)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            raw += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0, raw.decode(errors="replace")[-3000:]
    text = raw.decode("utf-8", errors="replace")
    assert "latest: " in text and "qa · " in text and "line one red" in text and "line two␍over␇" in text
    assert "ETA" in text and "tok/s" in text
    # the model's escapes never reach the terminal (rich's own colour codes do)
    assert b"\x1b[2J" not in raw and b"\x1b]0;pwned" not in raw and b"\x07" not in raw
    assert b"\rover" not in raw
    # the panel was redrawn as records landed, not only drawn at the end
    assert text.count("latest: ") >= 2, text[-2000:]


def test_real_run_piped_is_plain_and_short(proj, tmp_path, chat_server):
    chat_server.delay = 0.0
    res = subprocess.run(_run_args(proj, tmp_path / "run", chat_server.url), capture_output=True, text=True,
                         env=_env(), cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "\x1b" not in res.stderr and "\x1b" not in res.stdout
    bars = [x for x in res.stderr.splitlines() if x.startswith("generating ")]
    assert 1 <= len(bars) <= 11, res.stderr
    assert "records (100%)" in bars[-1] and "latest " in bars[-1] and "line one red" in bars[-1]
    assert len(res.stderr.splitlines()) < 20, res.stderr


def test_bar_counts_ended_records_and_tells_calls_rejections_steps_and_target(capsys, monkeypatch):
    """Requests are not records: 9 calls for 1 ended record shows 1/3, with the calls, the stage
    that rejected, the agent's steps and the accepted count against the target beside it."""
    monkeypatch.setattr(progress, "PLAIN_MIN_GAP_S", 0.0)
    d = RunDisplay(Console(file=io.StringIO(), force_terminal=False), {})
    d("plan", {"records": 3, "new": 3, "seconds": 0.01})
    d("start", {"records": 3, "pending": 3, "shards": 1, "run_dir": "x", "session": None})
    d("engine_ready", {})
    d("finished", {"n": 9})
    base = {"attempts": 1, "draft.attempt": 1, "solve.attempt": 1, "solve.steps": 4, "decided_by": "solve"}
    d("attempt", {**base, "status": "rejected", "final": False})
    d("target", {"accepted": 0, "target": 50, "ended": 0, "estimate": None})
    d("record", {**base, "status": "rejected", "final": True, "text": "x"})
    assert d.done() == 1
    line = d.plain_line()
    assert line.startswith("generating 1/3 records (33%)"), line
    assert "calls 9 for 1 ended" in line and "rejected solve 2" in line and "steps 8" in line
    d("target", {"accepted": 1, "target": 50, "ended": 2, "estimate": {"records": 98, "tokens": 1960.0}})
    assert "accepted 1/50 (~98 more records, ~1,960 tokens)" in d.plain_line()
    d("warning", {"line": "target 50 out of reach: solve passed 0 of 9"})
    assert "warning: target 50 out of reach: solve passed 0 of 9" in capsys.readouterr().err


def test_the_display_shows_requests_in_flight(proj, tmp_path, monkeypatch):
    """The engine tells progress how many requests are with the models (sent, not yet answered):
    some while the run goes, none once it has ended; the bar shows the count beside the calls."""
    from generator import run
    from generator.config.spec import load_spec
    from generator.engine.executors.local import LocalExecutor
    from generator.testing.fake import FakeBackend

    seen: list[int] = []
    ex = LocalExecutor(backend_factory=lambda c, **_: FakeBackend(c.name))
    res = run(load_spec(proj / "spec.yaml"), out=tmp_path / "run", executor=ex, limit=12,
              progress=lambda ev, d: seen.append(d["n"]) if ev == "in_flight" else None)
    assert res.generated == res.planned > 0
    assert seen and max(seen) > 0 and seen[-1] == 0, seen
    assert max(seen) <= res.model_calls  # never more than were sent

    monkeypatch.setattr(progress, "PLAIN_MIN_GAP_S", 0.0)
    d = RunDisplay(Console(file=io.StringIO(), force_terminal=False), {})
    d("plan", {"records": 3, "new": 3, "seconds": 0.01})
    d("start", {"records": 3, "pending": 3, "shards": 1, "run_dir": "x", "session": None})
    d("in_flight", {"n": 4})
    d("finished", {"n": 2})
    assert "calls 2 for 0 ended, in flight 4" in d.plain_line()
