"""No silent failure in production code (generator/ and scoring/; generator/testing holds test
stand-ins), checked on the syntax trees:

- a broad handler (`except Exception`, `except BaseException`, a bare `except`) logs (a call on
  `log`, `logger` or `logging`, or a handler's own `handleError`), raises, returns, exits, or hands
  the exception it caught on (uses its `as` name: a result carrying the error, a queue the
  consumer raises from); a body that does none of these swallows the error;
- no `except ImportError` / `ModuleNotFoundError` around an import of our own code (generator,
  scoring, a relative import, or `importlib.import_module` of a name not written out): our code
  is always installed, so such a handler only hides a bug;
- no `assert`: `python -O` drops it, so it must never decide what the program does.

The checks run on small examples first, so a walker that finds nothing cannot pass."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("generator", "scoring")
BROAD = {"Exception", "BaseException"}
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}
LOGGERS = {"log", "logger", "logging"}


def _names(node: ast.expr | None) -> set[str]:
    if node is None:
        return {"<bare>"}
    if isinstance(node, ast.Tuple):
        return set().union(*(_names(e) for e in node.elts))
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    return set()


def _walk_body(body: list[ast.stmt]):
    """Every node of `body`, not descending into functions, lambdas or classes defined there (a
    `return` in a nested function does not end the handler)."""
    nested = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    todo: list[ast.AST] = [n for n in body if not isinstance(n, nested)]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(c for c in ast.iter_child_nodes(node) if not isinstance(c, nested))


def _is_log_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    owner = node.func.value
    if node.func.attr == "handleError":
        return True
    if isinstance(owner, ast.Name) and owner.id in LOGGERS:
        return True
    return isinstance(owner, ast.Attribute) and owner.attr in LOGGERS  # self.log.warning(...)


def _is_exit(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exit"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "sys")


def handler_speaks(handler: ast.ExceptHandler) -> bool:
    for node in _walk_body(handler.body):
        if isinstance(node, (ast.Raise, ast.Return)) or _is_log_call(node) or _is_exit(node):
            return True
        if handler.name and isinstance(node, ast.Name) and node.id == handler.name \
                and isinstance(node.ctx, ast.Load):
            return True
    return False


def _first_party(module: str | None, level: int = 0) -> bool:
    return level > 0 or (module or "").split(".")[0] in FIRST_PARTY


def imports_first_party(body: list[ast.stmt]) -> bool:
    for node in _walk_body(body):
        if isinstance(node, ast.ImportFrom) and _first_party(node.module, node.level):
            return True
        if isinstance(node, ast.Import) and any(_first_party(a.name) for a in node.names):
            return True
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)) or _first_party(arg.value):
                return True
    return False


def problems(source: str, where: str = "<src>") -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assert):
            out.append(f"{where}:{node.lineno}: assert in production code; raise an error instead")
        if not isinstance(node, ast.Try):
            continue
        for h in node.handlers:
            caught = _names(h.type)
            if caught & (BROAD | {"<bare>"}) and not handler_speaks(h):
                out.append(f"{where}:{h.lineno}: broad except that neither logs, raises, returns nor hands the "
                           f"error on")
            if caught & IMPORT_ERRORS and imports_first_party(node.body):
                out.append(f"{where}:{h.lineno}: except ImportError around an import of our own code")
    return out


def production_files() -> list[Path]:
    files = [p for pkg in FIRST_PARTY for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in files if "testing" not in p.relative_to(ROOT).parts]


# -- the walker on examples: each kind is found, and what is allowed is not flagged

@pytest.mark.parametrize("src", [
    "try:\n    f()\nexcept Exception:\n    pass\n",
    "try:\n    f()\nexcept:\n    x = 1\n",
    "try:\n    f()\nexcept (OSError, BaseException) as exc:\n    def g():\n        return exc\n",
    "try:\n    from generator.core import x\nexcept ImportError:\n    x = None\n",
    "try:\n    from . import x\nexcept ModuleNotFoundError:\n    pass\n",
    "try:\n    mod = importlib.import_module(name)\nexcept ImportError as e:\n    raise\n",
    "assert x is not None\n",
])
def test_the_walker_finds(src):
    assert problems(src)


@pytest.mark.parametrize("src", [
    "try:\n    f()\nexcept Exception as exc:  # safe: ...\n    log.warning('f failed: %s', exc)\n",
    "try:\n    f()\nexcept Exception:\n    self.log.debug('x')\n",
    "try:\n    f()\nexcept BaseException:\n    cleanup()\n    raise\n",
    "try:\n    f()\nexcept Exception:\n    return None\n",
    "try:\n    f()\nexcept Exception as exc:\n    out.put(exc)\n",
    "try:\n    f()\nexcept BaseException:\n    sys.exit(2)\n",
    "try:\n    f()\nexcept OSError:\n    pass\n",
    "try:\n    import matplotlib\nexcept ImportError:\n    matplotlib = None\n",
])
def test_the_walker_allows(src):
    assert problems(src) == []


def test_no_silent_failure_in_generator_and_scoring():
    files = production_files()
    assert len(files) > 100  # the walk reached the packages
    found = [p for f in files for p in problems(f.read_text(), str(f.relative_to(ROOT)))]
    assert found == [], "\n".join(found)


# -- a missing optional package is one line naming its extra, not a skipped feature

def test_scores_a_spec_asks_for_name_the_missing_extra(proj, tmp_path, monkeypatch):
    import generator
    from generator.config.spec import load_spec
    from generator.core.errors import SynthgenError
    from generator.engine.executors.local import LocalExecutor
    from generator.runs import closeout
    from generator.testing.fake import FakeBackend

    def score(*a, **k):
        raise ModuleNotFoundError("No module named 'datasketch'", name="datasketch")

    monkeypatch.setattr(closeout.scoring_api, "score", score)
    spec = load_spec(proj / "spec.yaml", {"scoring.metrics": "[near_dup_rate]"})
    with pytest.raises(SynthgenError, match=r"'datasketch' package.*pip install 'synthgen\[scoring\]'"):
        generator.run(spec, out=tmp_path / "run", limit=2,
                      executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend(model=c.name)))
    assert list((tmp_path / "run" / "generations").glob("part-*.parquet"))  # the records are kept


def test_a_bug_in_our_own_code_is_not_called_a_missing_extra(monkeypatch):
    from generator.core.errors import missing_extra

    assert missing_extra(ModuleNotFoundError("x", name="scoring.metrics.nope"), "scores") is None
    assert missing_extra(ModuleNotFoundError("x", name="sklearn.cluster"), "scores").extra == "scoring"
