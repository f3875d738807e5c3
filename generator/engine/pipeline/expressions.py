"""The filter expression language: a safe subset of Python expressions over a row's columns.

Allowed: literals (numbers, strings, True/False/None, lists/tuples of them), names and dotted
attributes (`check.agree`, `problem.json.answer`), `and`/`or`/`not`, comparisons
(`== != < <= > >= in not in is is not`, chained), arithmetic (`+ - * / // %`, unary minus),
parentheses. Nothing else parses: no calls, subscripts, lambdas, comprehensions or dunders, and
nothing is ever passed to `eval`.

Missing values are None. An ordering comparison (`<`, `>=`, ...) with None is false, arithmetic
with None gives None, and division by zero gives None, so a row whose judge failed to answer
simply does not pass `quality.correctness >= 4`.
"""
from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Any, Mapping

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_ORDER = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, **_ORDER,
        ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
        ast.Is: operator.is_, ast.IsNot: operator.is_not}


class ExpressionError(ValueError):
    pass


def _path(node: ast.AST) -> tuple[str, ...] | None:
    """`a.b.c` -> ('a', 'b', 'c'); None for anything that is not a plain dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return tuple(reversed(parts))
    return None


def _check(node: ast.AST, refs: list[tuple[str, ...]]) -> None:
    if isinstance(node, ast.Expression):
        return _check(node.body, refs)
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, refs)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
        _check(node.operand, refs)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        _check(node.left, refs)
        _check(node.right, refs)
    elif isinstance(node, ast.Compare) and all(type(o) in _CMP for o in node.ops):
        for v in (node.left, *node.comparators):
            _check(v, refs)
    elif isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (bool, int, float, str))):
        pass
    elif isinstance(node, (ast.List, ast.Tuple)):
        for v in node.elts:
            _check(v, refs)
    elif isinstance(node, (ast.Name, ast.Attribute)):
        path = _path(node)
        if path is None or any(p.startswith("_") for p in path):
            raise ExpressionError("only names and dotted attributes of columns may be read (e.g. check.agree)")
        refs.append(path)
    else:
        what = type(node).__name__.lower()
        raise ExpressionError(f"'{what}' is not allowed in an expression (comparisons, and/or/not, "
                              f"arithmetic, names and literals only)")


@dataclass(frozen=True)
class Expression:
    source: str
    tree: ast.Expression
    refs: tuple[tuple[str, ...], ...]  # every dotted name read, e.g. ('check', 'agree')

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        return _eval(self.tree.body, env)

    def passes(self, env: Mapping[str, Any]) -> bool:
        return bool(self.evaluate(env))


def parse(source: str) -> Expression:
    text = source.strip()
    if not text:
        raise ExpressionError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error at column {exc.offset or 0}: {exc.msg}") from None
    refs: list[tuple[str, ...]] = []
    _check(tree, refs)
    return Expression(source=text, tree=tree, refs=tuple(dict.fromkeys(refs)))


def lookup(env: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = env
    for part in path:
        if isinstance(value, Mapping):
            value = value.get(part)
        else:
            return None
    return value


MAX_REPEAT = 100_000  # longest string or list a filter may build by repetition


def _too_big(a: Any, b: Any) -> bool:
    seq, n = (a, b) if isinstance(a, (str, list)) else (b, a)
    return isinstance(seq, (str, list)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT


def _eval(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        return lookup(env, _path(node))
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            result: Any = True
            for v in node.values:
                result = _eval(v, env)
                if not result:
                    return result
            return result
        result = False
        for v in node.values:
            result = _eval(v, env)
            if result:
                return result
        return result
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not v
        if v is None or not isinstance(v, (int, float)):
            return None
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, env), _eval(node.right, env)
        if a is None or b is None:
            return None
        if isinstance(node.op, ast.Mult) and _too_big(a, b):
            return None  # `"x" * 10**9` would stall the scheduler and exhaust memory: not a value
        try:
            return _BIN[type(node.op)](a, b)
        except (ZeroDivisionError, TypeError):
            return None
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, env)
            if type(op) in _ORDER and (left is None or right is None):
                return False
            try:
                ok = _CMP[type(op)](left, right)
            except TypeError:  # e.g. "a" < 1, or `in` on a number: not true
                return False
            if not ok:
                return False
            left = right
        return True
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(v, env) for v in node.elts]
    raise ExpressionError(f"cannot evaluate {type(node).__name__}")  # unreachable after parse()
