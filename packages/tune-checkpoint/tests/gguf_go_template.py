"""A small renderer for the subset of Go's text/template the Ollama Modelfile templates use.

Test helper only (no Go toolchain in CI). It follows Go's rules for what it covers: `{{- ` / ` -}}`
trim all adjacent whitespace; `range $i, $_ := .List` / `range .List` rebind dot; `if` / `else if` /
`else`; `$x := ...` declares and `$x = ...` assigns (visible to enclosing scopes); truthiness
(empty string, 0, empty list, nil, false are false); the functions and, or, not, eq, ne, len, slice.
Anything else raises, so a template using more fails loudly instead of rendering wrongly.
"""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"\{\{(- )?(.*?)( -)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|-?\d+|\$?[A-Za-z_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\$[A-Za-z_0-9]*|[A-Za-z_]+|\.)'
)


def _lex(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)] with trim markers applied."""
    items: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        items.append(("text", text))
        items.append(("action", match.group(2).strip()))
        trim_next = bool(match.group(3))
        pos = match.end()
    text = template[pos:]
    items.append(("text", text.lstrip(" \t\r\n") if trim_next else text))
    return items


def _parse(
    items: list[tuple[str, str]], pos: int, stop: tuple[str, ...]
) -> tuple[list[Any], int, str]:
    """Nodes until an action starting with one of `stop`; returns (nodes, next position, stop action)."""
    nodes: list[Any] = []
    while pos < len(items):
        kind, value = items[pos]
        pos += 1
        if kind == "text":
            if value:
                nodes.append(("text", value))
            continue
        head = value.split(" ", 1)[0]
        if head in stop:
            return nodes, pos, value
        if head == "if":
            branches = []
            cond = value[3:]
            while True:
                body, pos, ended = _parse(items, pos, ("else", "end"))
                branches.append((cond, body))
                if ended == "end":
                    break
                if ended.startswith("else if "):
                    cond = ended[len("else if ") :]
                    continue
                body, pos, ended = _parse(items, pos, ("end",))
                branches.append(("true", body))
                break
            nodes.append(("if", branches))
        elif head == "range":
            spec = value[len("range ") :]
            names: list[str] = []
            if ":=" in spec:
                left, spec = spec.split(":=", 1)
                names = [n.strip() for n in left.split(",")]
            body, pos, _ = _parse(items, pos, ("end",))
            nodes.append(("range", names, spec.strip(), body))
        else:
            nodes.append(("action", value))
    if stop:
        raise ValueError(f"template ended inside a block; expected one of {stop}")
    return nodes, pos, ""


class _Scope:
    def __init__(self, parent: _Scope | None = None) -> None:
        self.parent = parent
        self.names: dict[str, Any] = {}

    def find(self, name: str) -> _Scope:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope
            scope = scope.parent
        raise NameError(f"undefined variable {name}")


def _truth(value: Any) -> bool:
    return bool(value)


def _field(value: Any, path: list[str]) -> Any:
    for name in path:
        value = value[name] if isinstance(value, dict) else getattr(value, name)
    return value


_FUNCS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "len": len,
    "slice": lambda x, i, j=None: x[i:j],
}


def _eval(expr: str, dot: Any, scope: _Scope, root: Any) -> Any:
    tokens, pos = [], 0
    while expr[pos:].strip():
        match = _TOKEN.match(expr, pos)
        if match is None or not match.group(1):
            raise ValueError(f"cannot parse {expr[pos:]!r} in {expr!r}")
        tokens.append(match.group(1))
        pos = match.end()
    value, rest = _command(tokens, dot, scope, root)
    if rest:
        raise ValueError(f"trailing {rest!r} in {expr!r}")
    return value


def _command(tokens: list[str], dot: Any, scope: _Scope, root: Any) -> tuple[Any, list[str]]:
    head = tokens[0]
    if head in ("and", "or") or head in _FUNCS:
        args = []
        rest = tokens[1:]
        while rest and rest[0] != ")":
            arg, rest = _operand(rest, dot, scope, root)
            args.append(arg)
        if head == "and":
            result = args[0]
            for a in args:
                result = a
                if not _truth(a):
                    break
            return result, rest
        if head == "or":
            result = args[0]
            for a in args:
                result = a
                if _truth(a):
                    break
            return result, rest
        return _FUNCS[head](*args), rest
    return _operand(tokens, dot, scope, root)


def _operand(tokens: list[str], dot: Any, scope: _Scope, root: Any) -> tuple[Any, list[str]]:
    token, rest = tokens[0], tokens[1:]
    if token == "(":
        value, rest = _command(rest, dot, scope, root)
        if not rest or rest[0] != ")":
            raise ValueError("unbalanced parenthesis")
        return value, rest[1:]
    if token.startswith('"'):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape"), rest
    if re.fullmatch(r"-?\d+", token):
        return int(token), rest
    if token.startswith("$"):
        name, *path = token.split(".")
        base = root if name == "$" else scope.find(name).names[name]
        return _field(base, path), rest
    if token == ".":
        return dot, rest
    if token.startswith("."):
        return _field(dot, [p for p in token.split(".") if p]), rest
    raise ValueError(f"unsupported token {token!r}")


def _run(nodes: list[Any], dot: Any, scope: _Scope, root: Any, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "action":
            expr = node[1]
            declared = re.fullmatch(r"(\$\w+)\s*(:?=)\s*(.*)", expr, re.DOTALL)
            if declared:
                name, op, value = declared.groups()
                target = scope if op == ":=" else scope.find(name)
                target.names[name] = _eval(value, dot, scope, root)
            else:
                out.append(str(_eval(expr, dot, scope, root)))
        elif kind == "if":
            for cond, body in node[1]:
                if cond == "true" or _truth(_eval(cond, dot, scope, root)):
                    _run(body, dot, _Scope(scope), root, out)
                    break
        elif kind == "range":
            _, names, expr, body = node
            for index, item in enumerate(_eval(expr, dot, scope, root)):
                inner = _Scope(scope)
                if len(names) == 2:
                    inner.names[names[0]], inner.names[names[1]] = index, item
                elif len(names) == 1:
                    inner.names[names[0]] = item
                _run(body, item, inner, root, out)


def render_go_template(template: str, data: dict[str, Any]) -> str:
    """Render `template` with `data` as dot (and `$`)."""
    nodes, _, _ = _parse(_lex(template), 0, ())
    out: list[str] = []
    _run(nodes, data, _Scope(), data, out)
    return "".join(out)
