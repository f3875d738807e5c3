"""Running tool calls: arguments checked against the tool's schema first, then the call.

Python tools (`module:function` from the project) run in spawned worker processes whose cwd is
the project folder, under an address-space limit (`tool_memory_mb`) and an audit hook that refuses
opening or listing files outside the project and Python's own import roots, and starting
processes. That guards against a tool reading what it should not; it is not a sandbox for hostile
code (ctypes can go around it). A call past its timeout, or one that kills its worker, gives an
error result, and the worker is replaced. MCP tools go to one stdio server session per distinct
command, started on first use with the project folder as cwd.
"""
from __future__ import annotations

import logging
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from generator.config.tools import ToolDef
from generator.engine.dialogue.protocol import ToolCall, ToolResult

log = logging.getLogger(__name__)

PREVIEW = 200


def check_arguments(tool: ToolDef, arguments: str) -> tuple[dict | None, str | None]:
    """(arguments, None), or (None, why they break the tool's schema)."""
    import jsonschema

    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except ValueError as exc:
        return None, f"arguments are not JSON ({exc})"[:300]
    if not isinstance(args, dict):
        return None, "arguments must be a JSON object"
    errors = sorted(jsonschema.Draft202012Validator(tool.parameters).iter_errors(args), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(root)"
        return None, f"arguments break the schema of {tool.name}: {where}: {errors[0].message}"[:300]
    return args, None


def serialise(value: Any, max_chars: int) -> tuple[str, str | None]:
    """(content, None) or ("", error): strings as they are, other values as JSON."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return "", f"result is not JSON-serialisable ({type(value).__name__}): {repr(value)[:PREVIEW]}"
    if len(text) > max_chars:
        return "", f"result of {len(text)} chars is over max_result_chars {max_chars}: {text[:PREVIEW]}..."
    return text, None


# ---------------------------------------------------------------- worker process

_BLOCKED_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                   "os.forkpty", "pty.spawn")


def _init_worker(roots: list[str], import_paths: list[str], cwd: str, memory_mb: int) -> None:
    """Runs first in each worker: cwd, import paths, memory limit, then the audit hook (which can
    never be removed)."""
    import resource

    os.chdir(cwd)
    for p in reversed(import_paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    allowed = tuple(os.path.realpath(r) for r in roots)
    realpath, isinstance_, fspath = os.path.realpath, isinstance, os.fspath

    def inside(path: Any) -> bool:
        if isinstance_(path, int):  # an already open descriptor
            return True
        p = realpath(fspath(path) if not isinstance_(path, bytes) else path.decode(errors="replace"))
        return p in ("/dev/null", "/dev/urandom") or any(p == r or p.startswith(r + os.sep) for r in allowed)

    def hook(event: str, args: tuple) -> None:
        if event == "open" or event in ("os.listdir", "os.scandir"):
            path = args[0] if args else None
            if path is not None and not inside(path):
                raise PermissionError(f"a tool may not read outside the project: {path}")
        elif event.startswith(_BLOCKED_EVENTS):
            raise PermissionError(f"a tool may not start processes ({event})")

    sys.addaudithook(hook)


def _run_tool(ref: str, arguments: dict, max_chars: int) -> tuple[str, str | None]:
    import importlib

    module, _, name = ref.partition(":")
    fn = getattr(importlib.import_module(module), name)
    return serialise(fn(**arguments), max_chars)


def _warm() -> None:
    pass


def _import_roots() -> list[str]:
    """Folders a worker may read besides the project: where Python imports from."""
    return [p for p in dict.fromkeys(os.path.realpath(p) for p in sys.path if p) if os.path.isdir(p) and p != "/"]


class _Slot:
    def __init__(self, initargs: tuple):
        self.initargs = initargs
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
            initargs=initargs)
        # start the worker now: a spawn takes a second or more on a busy machine, and that must not
        # count against the first call's `tool_timeout`
        try:
            self.pool.submit(_warm).result(timeout=120)
        except Exception as exc:  # noqa: BLE001 - a worker that cannot start fails its calls instead
            log.warning("a tool worker did not start (%s: %s); its tool calls will fail", type(exc).__name__, exc)

    def kill(self) -> None:
        for proc in list(getattr(self.pool, "_processes", {}).values()):
            proc.kill()
        self.pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- MCP sessions

class _McpServer:
    """One stdio MCP session in a background event loop thread."""

    def __init__(self, command: list[str], cwd: str, start_timeout: float):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="mcp-" + command[0])
        self.thread.start()
        self._stop: asyncio.Event | None = None
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self.session = None
        self._main = asyncio.run_coroutine_threadsafe(self._serve(command, cwd), self.loop)
        try:
            self._ready.result(timeout=start_timeout)
        except BaseException:
            self.close()
            raise

    async def _serve(self, command: list[str], cwd: str) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        self._stop = asyncio.Event()
        params = StdioServerParameters(command=command[0], args=list(command[1:]), cwd=cwd)
        try:
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                self.session = session
                self._ready.set_result(True)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def run(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        try:
            self._main.result(timeout=5)
        except BaseException as exc:  # noqa: BLE001 - closing: the loop is stopped next either way
            log.debug("MCP session ended with %s: %s", type(exc).__name__, exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class ToolRunner:
    """Executes `ToolCall`s of one run's Python and MCP tools. `submit` returns a Future, so the
    scheduler runs calls off its own thread; the runner survives every failure of a tool."""

    def __init__(self, tools: list[ToolDef] | tuple[ToolDef, ...], project_dir: Path | str, *,
                 timeout: float = 10.0, max_result_chars: int = 4000, memory_mb: int = 1024, workers: int = 2,
                 import_paths: list[str] | None = None):
        """`import_paths`: where `module:function` is imported from (the scheduler passes
        generator.engine.pipeline.verify.project_paths(spec.base_dir)); default: the project folder."""
        self.tools = {t.name: t for t in tools}
        self.project_dir = str(Path(project_dir).resolve())
        self.timeout, self.max_result_chars = timeout, max_result_chars
        paths = [str(Path(p).resolve()) for p in import_paths or []]
        if self.project_dir not in paths:
            paths.append(self.project_dir)
        self._initargs = ([self.project_dir, *_import_roots()], paths, self.project_dir, memory_mb)
        self._workers = workers
        self._slots: queue.Queue[_Slot] | None = None
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=max(4, workers * 2),
                                                              thread_name_prefix="tool")
        self._mcp: dict[tuple[str, ...], _McpServer] = {}
        self._mcp_lock = threading.Lock()
        self._closed = False

    # the scheduler's entry point
    def submit(self, call: ToolCall) -> concurrent.futures.Future:
        return self._threads.submit(self.run, call)

    def run(self, call: ToolCall) -> ToolResult:
        start = time.monotonic()
        tool = self.tools.get(call.name)
        if tool is None:
            return ToolResult(call.call_id, "", f"unknown tool '{call.name}'")
        if tool.kind == "simulate":
            return ToolResult(call.call_id, "", f"{call.name} is a simulated tool: the driver asks a model")
        args, err = check_arguments(tool, call.arguments)
        if err is None:
            try:
                content, err = (self._python(tool, args) if tool.kind == "python" else self._call_mcp(tool, args))
            except Exception as exc:  # noqa: BLE001 - a tool's failure is its call's result
                content, err = "", f"{type(exc).__name__}: {exc}"[:300]
        return ToolResult(call.call_id, "" if err else content, err, time.monotonic() - start)

    def _python(self, tool: ToolDef, args: dict) -> tuple[str, str | None]:
        with self._mcp_lock:
            if self._slots is None:
                self._slots = queue.Queue()
                for _ in range(self._workers):
                    self._slots.put(_Slot(self._initargs))
        slot = self._slots.get()
        try:
            fut = slot.pool.submit(_run_tool, tool.python, args, self.max_result_chars)
            return fut.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            slot.kill()
            slot = _Slot(self._initargs)
            return "", f"{tool.name} ran past its {self.timeout:g}s timeout"
        except concurrent.futures.process.BrokenProcessPool:
            slot.kill()
            slot = _Slot(self._initargs)
            return "", f"{tool.name}: the worker process died (a crash, or over the memory limit)"
        except MemoryError:
            return "", f"{tool.name}: MemoryError (over the memory limit)"
        except Exception as exc:  # noqa: BLE001 - the tool raised
            return "", f"{tool.name} raised {type(exc).__name__}: {exc}"[:300]
        finally:
            self._slots.put(slot)

    def _server(self, tool: ToolDef) -> _McpServer:
        key = tuple(tool.mcp.command)
        with self._mcp_lock:
            if key not in self._mcp:
                self._mcp[key] = _McpServer(list(key), self.project_dir, start_timeout=max(self.timeout, 30.0))
            return self._mcp[key]

    def _call_mcp(self, tool: ToolDef, args: dict) -> tuple[str, str | None]:
        server = self._server(tool)
        name = tool.mcp.tool or tool.name
        try:
            out = server.run(server.session.call_tool(name, args), self.timeout)
        except concurrent.futures.TimeoutError:
            return "", f"{tool.name}: the MCP server did not answer within {self.timeout:g}s"
        text = "\n".join(getattr(c, "text", "") for c in out.content if getattr(c, "type", "") == "text")
        # mcp 2.x names the fields in snake case, 1.x in camel case
        is_error = getattr(out, "is_error", None) or getattr(out, "isError", False)
        structured = getattr(out, "structured_content", None) or getattr(out, "structuredContent", None)
        if is_error:
            return "", f"{tool.name}: the MCP server reported an error: {text[:300]}"
        if not text and structured is not None:
            return serialise(structured, self.max_result_chars)
        return serialise(text, self.max_result_chars)

    def list_mcp_tools(self, command: list[str]) -> list[str]:
        """The tool names a server offers (to check a spec's `mcp:` tools)."""
        server = self._server(ToolDef(name="probe", description="-", mcp={"command": command}))
        return [t.name for t in server.run(server.session.list_tools(), max(self.timeout, 30.0)).tools]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._threads.shutdown(wait=True, cancel_futures=True)
        if self._slots is not None:
            while not self._slots.empty():
                self._slots.get().pool.shutdown(wait=True, cancel_futures=True)
        for server in self._mcp.values():
            server.close()

    def __enter__(self) -> "ToolRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
