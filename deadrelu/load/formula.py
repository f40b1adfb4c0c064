"""The grammar a ``.pt2`` shape formula must be in before ``sympy.sympify`` reads it.

``sympify`` ``eval``\\ s its text, and sympy evaluates numbers eagerly: ``Symbol('s0') +
9**9**9`` never comes back. A formula is accepted when it is in the grammar (nothing but
sympy runs) and bounded (sympy's work is small):

* grammar: numbers, ``+ - * / // % ** & | ^ ~``, comparisons, ``and``/``or``/``not``,
  tuples, calls of the shape functions (sympy's arithmetic, relational and logic classes,
  torch's sympy functions) with such arguments and constant keyword arguments, bare names
  that are not Python builtins (sympy turns them into symbols), and a string only as the
  name in ``Symbol('s0')`` or the digits in ``Float('1.5')``. No attributes, subscripts,
  lambdas or other strings: those are how a formula reaches Python;
* bounds: at most :data:`MAX_LENGTH` characters; at most :data:`MAX_LATTICE_ARGUMENTS`
  arguments to ``Max``/``Min`` in all; integer literals within ``2**64``;
  keyword numbers (``precision=53``) within :data:`MAX_KEYWORD`; ``Float`` digits and
  exponent short; every power (``**``, ``Pow``, ``PowByNatural``, ``FloatPow``, ``LShift``)
  has a literal exponent within :data:`MAX_EXPONENT` and no power in its base, so no
  power of a power. torch's ``srepr`` output stays far inside all of these.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Callable
from typing import Any

#: Longest formula accepted. torch writes short ``srepr`` text (``Add(Mul(Integer(2),
#: Symbol('s0', integer=True, positive=True)), Integer(-1))``); sympy's work grows faster
#: than the length, and 4000 characters of the costliest shape take it seconds.
MAX_LENGTH = 4000
#: Most arguments of ``Max``/``Min`` calls in one formula: sympy compares every pair, with
#: assumptions (64 symbols take it seconds, 256 minutes).
MAX_LATTICE_ARGUMENTS = 16
#: Largest integer literal (a tensor size fits in 64 bits).
MAX_INTEGER = 2 ** 64
#: Largest number a keyword argument may carry (``precision=53`` bits).
MAX_KEYWORD = 4096
#: Largest exponent of a power, in magnitude.
MAX_EXPONENT = 64

#: sympy classes a formula may call: arithmetic, relations, logic, numbers.
_SYMPY_CALLS = frozenset({
    "Symbol", "Dummy", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor",
    "ceiling", "sign", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
    "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not", "Xor", "ITE", "Piecewise",
    "ExprCondPair", "Tuple"})
#: Base classes in torch's sympy module that are not functions of their own.
_NOT_CALLS = frozenset({"Application", "Expr", "LatticeOp", "MinMaxBase"})
#: Calls whose second argument is an exponent.
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow", "LShift"})
_BINARY = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr, ast.BitXor)
_UNARY = (ast.USub, ast.UAdd, ast.Invert, ast.Not)
_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_FLOAT_TEXT = re.compile(r"[-+]?(\d{1,60}\.?\d{0,60}|\.\d{1,60})([eE][-+]?\d{1,4})?")
# Calls whose first argument may be a string: a symbol's name, a float's digits.
_STRING_TAKERS: dict[str, Callable[[str], bool]] = {
    "Symbol": str.isidentifier, "Dummy": str.isidentifier,
    "Float": lambda text: _FLOAT_TEXT.fullmatch(text) is not None}

_NAMES: tuple[frozenset[str], frozenset[str]] | None = None


def _names() -> tuple[frozenset[str], frozenset[str]]:
    """``(calls, names)``: the classes a formula may call, and every sympy/torch name it may
    use bare (constants such as ``oo`` and ``true``)."""
    global _NAMES
    if _NAMES is None:
        import sympy
        from sympy.core.function import FunctionClass

        from torch.utils._sympy import functions as torch_functions

        def expression_names(module: Any) -> set[str]:
            return {name for name in dir(module) if not name.startswith("_") and (
                isinstance(value := getattr(module, name, None), type) and issubclass(value, sympy.Basic)
                or isinstance(value, (FunctionClass, sympy.Basic)))}

        torch_names = expression_names(torch_functions) - _NOT_CALLS
        _NAMES = (frozenset(_SYMPY_CALLS | torch_names), frozenset(expression_names(sympy) | torch_names))
    return _NAMES


class _Refused(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _costly(detail: str) -> _Refused:
    return _Refused(f"too costly to evaluate ({detail})")


_CODE = "that is Python code"


def formula_problem(text: str) -> str | None:
    """What is wrong with a formula for ``sympy.sympify``, or None when it may be read.

    Args:
        text: an ``expr_str`` from a serialized program.

    Returns:
        None, ``"that is Python code"`` (outside the grammar), or ``"too costly to evaluate
        (...)"`` (in the grammar, past a bound).
    """
    if len(text) > MAX_LENGTH:
        return f"too costly to evaluate (longer than {MAX_LENGTH} characters)"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return _CODE
    try:
        _check(tree.body)
    except _Refused as refused:
        return refused.problem
    return None


def plain_formula(text: str) -> bool:
    """Whether ``sympy.sympify`` can read ``text`` running nothing but sympy, briefly
    (:func:`formula_problem` finds nothing).

    Args:
        text: an ``expr_str`` from a serialized program.

    Returns:
        True when the text is in the grammar and within its bounds.
    """
    return formula_problem(text) is None


def _literal(node: ast.AST) -> float | None:
    """The number a literal exponent spells: ``3``, ``-1``, ``Integer(2)``, ``Rational(1, 2)``."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _literal(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords \
            and node.func.id in ("Integer", "Rational") and 1 <= len(node.args) <= 2:
        values = [_literal(argument) for argument in node.args]
        if any(value is None or abs(value) > MAX_EXPONENT for value in values):
            return None
        return values[0] / values[1] if len(values) == 2 and values[1] else values[0]
    return None


def _power_parts(node: ast.AST) -> tuple[ast.AST, ast.AST] | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return node.left, node.right
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _POWERS \
            and len(node.args) == 2:
        return node.args[0], node.args[1]
    return None


def _check_power(base: ast.AST, exponent: ast.AST) -> None:
    value = _literal(exponent)
    if value is None or abs(value) > MAX_EXPONENT:
        raise _costly(f"a power whose exponent is not a number within {MAX_EXPONENT}")
    if any(_power_parts(inner) is not None for inner in ast.walk(base)):
        raise _costly("a power of a power")


def _check(root: ast.AST) -> None:
    calls, names = _names()
    lattice_arguments = 0
    stack: list[ast.AST] = [root]
    while stack:
        item = stack.pop()
        power = _power_parts(item)
        if power is not None:
            _check_power(*power)
        if isinstance(item, ast.Constant):
            if isinstance(item.value, int) and not isinstance(item.value, bool) and abs(item.value) > MAX_INTEGER:
                raise _costly("an integer beyond 2**64")
            if not isinstance(item.value, (int, float, bool)) and item.value is not None:
                raise _Refused(_CODE)
        elif isinstance(item, ast.Name):
            # A bare name sympy does not know becomes a symbol; one naming a Python builtin or
            # another sympy helper would hand sympy a function instead.
            if item.id.startswith("_") or item.id not in names and (
                    hasattr(builtins, item.id) or _is_sympy_name(item.id)):
                raise _Refused(_CODE)
        elif isinstance(item, ast.BinOp) and isinstance(item.op, _BINARY):
            stack += [item.left, item.right]
        elif isinstance(item, ast.UnaryOp) and isinstance(item.op, _UNARY):
            stack.append(item.operand)
        elif isinstance(item, ast.BoolOp):
            stack += item.values
        elif isinstance(item, ast.Compare) and all(isinstance(op, _COMPARE) for op in item.ops):
            stack += [item.left, *item.comparators]
        elif isinstance(item, ast.Tuple):
            stack += item.elts
        elif isinstance(item, ast.Call):
            stack += _call_arguments(item, calls, names)
            if isinstance(item.func, ast.Name) and item.func.id in ("Max", "Min"):
                lattice_arguments += len(item.args)
                if lattice_arguments > MAX_LATTICE_ARGUMENTS:
                    raise _costly(f"more than {MAX_LATTICE_ARGUMENTS} arguments to Max/Min")
        else:
            raise _Refused(_CODE)


def _is_sympy_name(name: str) -> bool:
    import sympy
    return hasattr(sympy, name)


def _call_arguments(item: ast.Call, calls: frozenset[str], names: frozenset[str]) -> list[ast.AST]:
    """The arguments of a call to check further, after checking the call itself."""
    if not isinstance(item.func, ast.Name) or item.func.id not in names:
        raise _Refused(_CODE)
    if item.func.id not in calls:
        raise _costly(f"calls {item.func.id}, which is not a shape function")
    arguments = list(item.args)
    check = _STRING_TAKERS.get(item.func.id)
    if check is not None and arguments and isinstance(arguments[0], ast.Constant) \
            and isinstance(arguments[0].value, str):
        if not check(arguments[0].value):
            raise _Refused(_CODE)
        arguments = arguments[1:]
    for keyword in item.keywords:
        if keyword.arg is None or keyword.arg.startswith("_") or not (
                isinstance(keyword.value, ast.Constant)
                and isinstance(keyword.value.value, (int, float, bool, type(None)))):
            raise _Refused(_CODE)
        value = keyword.value.value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_KEYWORD:
            raise _costly(f"keyword {keyword.arg}={value} beyond {MAX_KEYWORD}")
    return arguments


__all__ = ["MAX_EXPONENT", "MAX_LATTICE_ARGUMENTS", "MAX_LENGTH", "formula_problem", "plain_formula"]
