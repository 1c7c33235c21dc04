"""A jinja2 sandbox that bounds the work a chat template may do in one render.

`ImmutableSandboxedEnvironment` stops a template from reaching Python internals, but not from
running forever: `{% for a in range(10**5) %}{% for b in range(10**5) %}` is 10^10 steps. Here
every `{% for %}` loop draws from one budget of iterations per render, `+`, `*` and `**` refuse
results past a size, and the rendered text has a maximum length. A template that goes past a
limit raises `TemplateLimitError` (a jinja `SecurityError`) at once.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterable, Iterator
from typing import Any

import jinja2
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_LOOP_ITERATIONS = 200_000  # all `for` iterations of one render together
MAX_OUTPUT_CHARS = 50_000_000  # rendered text, and any string or list a `+`/`*` builds
MAX_POWER_BITS = 4096  # size of an integer `**` may produce

_GUARD = "tune_loop_guard"  # the global every `for` iterable is passed through


class TemplateLimitError(jinja2.exceptions.SecurityError):
    """A chat template went past a sandbox limit (loop iterations, output or value size)."""


class _Budget:
    def __init__(self) -> None:
        self.iterations = 0


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "tune_template_budget", default=None
)


def _loop_guard(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = _BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget.iterations += 1
            if budget.iterations > MAX_LOOP_ITERATIONS:
                raise TemplateLimitError(
                    f"more than {MAX_LOOP_ITERATIONS} loop iterations in one render"
                )
        yield item


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """An immutable sandbox whose loops, `+`, `*`, `**` and output are bounded (see module)."""

    intercepted_binops = frozenset({"+", "*", "**"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        """Refuse a `+`/`*` result longer than `MAX_OUTPUT_CHARS` or a `**` too large."""
        if operator == "+":
            size = _size(left) + _size(right)
        elif operator == "*":
            count = right if isinstance(right, int) else left if isinstance(left, int) else 0
            size = max(_size(left), _size(right)) * max(count, 0)
        else:
            size = 0
            big = isinstance(left, int) and isinstance(right, int) and abs(left) > 1
            if big and right > 0 and right * math.log2(abs(left)) > MAX_POWER_BITS:
                raise TemplateLimitError(f"{left} ** {right} exceeds {MAX_POWER_BITS} bits")
        if size > MAX_OUTPUT_CHARS:
            raise TemplateLimitError(
                f"a {operator!r} result of {size} items exceeds {MAX_OUTPUT_CHARS}"
            )
        return super().call_binop(context, operator, left, right)


def guard_loops(template: jinja2.nodes.Template) -> jinja2.nodes.Template:
    """Pass the iterable of every `{% for %}` in a parsed template through the loop budget.

    Args:
        template: the parsed template (from `Environment.parse`); changed in place.
    """
    for loop in template.find_all(jinja2.nodes.For):
        guard = jinja2.nodes.Name(_GUARD, "load", lineno=loop.lineno)
        loop.iter = jinja2.nodes.Call(guard, [loop.iter], [], None, None, lineno=loop.lineno)
    return template


def install_guard(env: jinja2.Environment) -> None:
    """Make the loop guard available to templates compiled by `env`."""
    env.globals[_GUARD] = _loop_guard


def render_bounded(template: jinja2.Template, **variables: Any) -> str:
    """Render with a fresh loop budget, stopping once the text passes `MAX_OUTPUT_CHARS`.

    Args:
        template: a template compiled by a `LimitedSandbox` from a `guard_loops` tree.
        **variables: the template variables.
    """
    token = _BUDGET.set(_Budget())
    try:
        pieces: list[str] = []
        length = 0
        for piece in template.generate(**variables):
            length += len(piece)
            if length > MAX_OUTPUT_CHARS:
                raise TemplateLimitError(f"the rendered text exceeds {MAX_OUTPUT_CHARS} characters")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _BUDGET.reset(token)
