"""What `synthgen run` shows while it generates: a bar (records ended, tok/s, elapsed, ETA, cost;
then model calls answered and requests in flight, rejections and agent steps per stage, and accepted of a target) and,
below it, the latest finished record, so the first run shows data within seconds of the engine.
The bar counts records that have ended (never requests: a record of a pipeline or an agent makes
many), so a run whose records are still retrying or stepping does not show 100%.

On a terminal it is a rich live display; piped or redirected it writes a few plain lines (one per
tenth of the plan at most every few seconds, or one a minute) instead of redrawing. Spec text (topic,
template) is shown literally, never read as markup; model output has its escape sequences removed
and its control characters made visible, so an answer cannot move the cursor or recolour the terminal."""
from __future__ import annotations

import re
import time

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from generator.cli.output import echo
from generator.engine.tally import Tally

LINES = 4  # lines of the latest record's text shown on a terminal
PLAIN_EVERY_S = 60.0  # a piped run writes a line at least this often while records land
PLAIN_MIN_GAP_S = 5.0  # ... and at most this often for a tenth of the plan

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), the 8-bit CSI, and any other escape (ESC c resets)
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
                     r"|\x1b[ -/]*[0-~]?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_STYLE = {"ok": "green", "truncated": "yellow", "invalid_json": "yellow", "empty": "yellow", "no_answer": "yellow",
          "error": "red"}


def safe_text(text: str) -> str:
    """Text a terminal prints as it is: escape sequences dropped, other control characters shown as
    their Unicode pictures (␍ for a carriage return), tabs as spaces; newlines kept."""
    text = _ESCAPE.sub("", text).replace("\t", "    ")
    return _CONTROL.sub(lambda m: chr(0x2400 + ord(m.group())) if ord(m.group()) < 0x20
                        else "\u2421" if m.group() == "\x7f" else "\ufffd", text)


def record_label(row: dict) -> str:
    """`status · template · topic / subtopic` of a finished row (a pipeline stage's row names its stage)."""
    where = " / ".join(str(row[k]) for k in ("topic", "subtopic") if row.get(k))
    parts = [str(row.get("status") or "?"), str(row.get("template") or ""), where]
    if row.get("final") is False:
        parts.insert(1, f"stage {row.get('stage') or '?'}")
    return safe_text(" · ".join(p for p in parts if p))


def record_text(row: dict) -> str:
    return safe_text(str(row.get("text") or row.get("completion") or ""))


def latest_panel(row: dict, lines: int = LINES) -> Panel:
    text = record_text(row).strip("\n")
    shown = text.splitlines()[:lines]
    body: list[Text] = [Text(line, no_wrap=True, overflow="ellipsis") for line in shown]
    if len(text.splitlines()) > lines:
        body.append(Text("…", style="dim"))
    if not body:
        body = [Text("(no text)", style="dim")]
    status = str(row.get("status") or "?")
    title = Text("latest: ")
    title.append(record_label(row), style=_STYLE.get(status, "yellow"))
    return Panel(Group(*body), title=title, title_align="left", border_style="dim")


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Bar(Progress):
    """The bar with the latest record's panel below it."""

    def __init__(self, console: Console, lines: int):
        self.latest: dict | None = None  # set first: the parent's constructor renders once
        self.lines = lines
        super().__init__(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                         TimeRemainingColumn(), TextColumn("{task.fields[cost]}"), console=console,
                         transient=False, refresh_per_second=4)

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.latest is not None:
            yield latest_panel(self.latest, self.lines)


class RunDisplay:
    """The `progress` callback of `generator.run`: call it with (event, data); `close()` at the end."""

    def __init__(self, console: Console, prices: dict[str, dict | None], live: bool | None = None,
                 lines: int = LINES):
        self.console, self.prices = console, prices
        self.live = console.is_terminal if live is None else live
        self.bar = _Bar(console, lines) if self.live else None
        self.task = None
        self.tokens = self.finished = self.records = self.total = self.base = 0
        self.t0: float | None = None  # the engine's first ready: tok/s counts from there
        self.began = 0.0  # this start (a feedback round starts again): the ETA's pace counts from there
        self.cost = None
        self.latest: dict | None = None
        self._said_at = 0.0  # plain mode: when the last line went out, and at which tenth
        self._said_tenth = -1
        self._said_done = -1
        self._said_calls = -1
        self.tally: Tally | None = None  # rows seen: rejections and steps per stage
        self.target: dict | None = None  # the latest `target` event: accepted of the target
        self.in_flight = 0  # requests with the models now (sent, not yet answered)

    # what the bar counts: records that have ended (a record's many requests, its retries, a
    # pipeline's stages and an agent's steps are shown beside it, never counted as records)
    def done(self) -> int:
        return min(self.base + self.records, self.total)

    def _count(self, row: dict) -> None:
        if self.tally is None:
            stages = [k[:-len(".attempt")] for k in row if k.endswith(".attempt")]
            self.tally = Tally(stages or [str(row.get("stage") or "generate")])
        self.tally.add(row)

    def more_text(self) -> str:
        """`calls 40, in flight 12; rejected solve 9, keep 3; steps 57; accepted 3/50`."""
        parts = []
        if self.finished or self.in_flight:
            calls = f"calls {self.finished:,}"
            if self.records < self.finished:
                calls += f" for {self.records:,} ended"
            if self.in_flight:
                calls += f", in flight {self.in_flight:,}"
            parts.append(calls)
        t = self.tally
        if t is not None and t.rejections():
            parts.append("rejected " + ", ".join(f"{s} {n:,}" for s, n in t.rejections().items()))
        if t is not None and t.steps:
            parts.append(f"steps {t.steps:,}")
        if self.target is not None:
            acc = f"accepted {self.target['accepted']:,}/{self.target['target']:,}"
            est = self.target.get("estimate")
            if est and est.get("records"):
                acc += f" (~{est['records']:,} more records"
                acc += f", ~{est['tokens']:,.0f} tokens)" if est.get("tokens") else ")"
            parts.append(acc)
        return "; ".join(parts)

    def rate(self) -> str:
        dt = max(time.time() - (self.t0 or time.time()), 1e-6)
        return f"{self.tokens / dt:,.0f} tok/s" if self.tokens else ""

    def eta(self) -> float | None:
        """Seconds left at this run's pace so far (None before the first record)."""
        new = self.done() - self.base
        if not self.t0 or new <= 0:
            return None
        return (self.total - self.done()) * (time.time() - max(self.t0, self.began)) / new

    def _cost_text(self) -> str:
        return self.cost.text(max(self.finished, self.records)) if self.cost else ""

    def _advance(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=self.done(), rate=self.rate(), cost=self._cost_text(),
                            more=self.more_text())
        elif not self.live:
            self._plain(final=False)

    def plain_line(self) -> str:
        pct = f" ({self.done() / self.total:.0%})" if self.total else ""
        parts = [f"generating {self.done()}/{self.total} records{pct}", self.rate(),
                 f"elapsed {_clock(time.time() - self.t0) if self.t0 else _clock(0)}",
                 f"ETA {_clock(self.eta())}", self._cost_text(), self.more_text()]
        line = ", ".join(p for p in parts if p)
        if self.latest is not None:
            first = next((s for s in record_text(self.latest).splitlines() if s.strip()), "")
            first = first if len(first) <= 80 else first[:79] + "…"
            line += f"; latest {record_label(self.latest)}: {first}"
        return line

    def _plain(self, final: bool) -> None:
        if self.total == 0 or (self.done() == self._said_done and self.finished == self._said_calls):
            return  # nothing new; calls answered while no record ends (an agent stepping) are news
        now, tenth = time.time(), self.done() * 10 // self.total
        if not final and not (tenth > self._said_tenth and now - self._said_at >= PLAIN_MIN_GAP_S) \
                and now - self._said_at < PLAIN_EVERY_S:
            return
        echo(self.plain_line(), error=True)
        self._said_at, self._said_tenth, self._said_done = now, tenth, self.done()
        self._said_calls = self.finished

    def __call__(self, event: str, data: dict) -> None:
        if event == "plan":
            echo(f"plan: {data['records']} records ({data['new']} new) in {data['seconds']:.2f}s", error=True)
        elif event == "start":
            done = data["records"] - data["pending"]
            if done:
                echo(f"resuming: {done} records already generated, {data['pending']} to go", error=True)
            if data["pending"]:
                self.console.print("[dim]loading the model (first use converts the embedded model once)...[/]")
            self.base, self.began = done, time.time()
            self.finished = self.records = 0  # counted from this start on
            if data["pending"] and data.get("session"):
                from generator.cli.live_cost import LiveCost

                self.cost = LiveCost(data["run_dir"], data["session"], self.prices, data["pending"])
            self.total = data["records"]
            self._said_tenth, self._said_done = done * 10 // max(self.total, 1), done
            if self.bar is not None:
                self.task = self.bar.add_task("generating", total=data["records"], completed=done, rate="",
                                              cost="", more="")
                self.bar.start()
        elif event == "engine_ready":
            self.t0 = self.t0 or time.time()
        elif event == "finished":
            self.finished += data["n"]
            self._advance()
        elif event == "in_flight":  # shown with the next update: one redraw per request sent would cost
            self.in_flight = data["n"]
        elif event == "attempt" or (event == "record" and data.get("final") is False):
            self._count(data)  # a rejected attempt of a pipeline: shown and tallied, not a record
            self._show(data)
            self._advance()
        elif event == "target":
            self.target = data
        elif event == "warning":  # above a live bar (rich keeps the bar below it), or one plain line
            if self.bar is not None:
                self.console.print(Text(f"warning: {data['line']}", style="yellow"))
            else:
                echo(f"warning: {data['line']}", error=True)
        elif event == "record":
            self._count(data)
            self.records += 1
            self.tokens += data.get("completion_tokens") or 0
            self._show(data)
            self._advance()
        elif event == "done":
            self.close()

    def _show(self, row: dict) -> None:
        self.latest = row
        if self.bar is not None:
            self.bar.latest = row

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.total:
            self._plain(final=True)
