"""Tools of specs/tool_math.yaml: an exact calculator and a unit converter (project Python tools,
run by the agent stage in a worker process with the project folder as cwd)."""
from __future__ import annotations

import ast
import operator

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large (at most 64)")
        return _OPS[type(node.op)](left, right)
    raise ValueError(f"not allowed in an expression: {ast.dump(node)[:60]}")


def _tidy(value: float) -> float | int:
    value = round(value, 9)
    return int(value) if float(value).is_integer() else value


def calculate(expression: str) -> float | int:
    """The value of an arithmetic expression: numbers, + - * / // % ** and parentheses."""
    if len(expression) > 200:
        raise ValueError("expression too long (at most 200 characters)")
    return _tidy(_eval(ast.parse(expression.replace("^", "**"), mode="eval").body))


# factor to the base unit of each dimension
_UNITS = {
    "length": {"mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0, "in": 0.0254, "ft": 0.3048, "yd": 0.9144,
               "mi": 1609.344},
    "mass": {"g": 0.001, "kg": 1.0, "oz": 0.028349523125, "lb": 0.45359237},
    "volume": {"ml": 0.001, "l": 1.0, "cup": 0.2365882365, "gal": 3.785411784},
    "time": {"s": 1.0, "min": 60.0, "h": 3600.0, "day": 86400.0},
}
UNITS = sorted([u for d in _UNITS.values() for u in d] + ["c", "f", "k"])


def _to_kelvin(value: float, unit: str) -> float:
    return {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[unit]


def convert_units(value: float, from_unit: str, to_unit: str) -> dict:
    """`value` in `from_unit` expressed in `to_unit` (same dimension: length, mass, volume, time,
    temperature)."""
    if {from_unit, to_unit} <= {"c", "f", "k"}:
        k = _to_kelvin(value, from_unit)
        out = {"c": k - 273.15, "f": (k - 273.15) * 9 / 5 + 32, "k": k}[to_unit]
        return {"value": _tidy(out), "unit": to_unit}
    for dim, units in _UNITS.items():
        if from_unit in units and to_unit in units:
            return {"value": _tidy(value * units[from_unit] / units[to_unit]), "unit": to_unit}
    raise ValueError(f"cannot convert {from_unit} to {to_unit}: not the same dimension")
