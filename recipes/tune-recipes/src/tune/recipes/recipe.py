"""The recipe contract: what an entry point in the ``tune.recipes`` group points at."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.config import load_target

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


@dataclass(frozen=True)
class Recipe:
    """A runnable recipe.

    Args:
        name: what users type (``tune run <name>``); bundled configs live in
            ``configs/<name>/*.yaml`` of this package.
        config_class: the closed config schema, a dataclass (optionally with
            ``validate(context) -> list[Issue]``).
        run: ``run(config) -> None``, or its ``"module:attr"`` path, imported only when the
            recipe runs (so ``tune ls`` and ``tune validate`` stay light).
        description: one line for ``tune ls``.
        config_dir: a directory of extra ``*.yaml`` configs (recipes from other packages).
    """

    name: str
    config_class: type
    run: Callable[[Any], object] | str
    description: str = ""
    config_dir: Path | Traversable | None = None

    @classmethod
    def bundled(cls, config_class: type, description: str) -> Recipe:
        """A recipe of this package: ``config_class`` lives in ``tune.recipes.<name>.config`` and
        ``run`` in ``tune.recipes.<name>.loop`` (imported only when the recipe runs)."""
        package = config_class.__module__.rpartition(".")[0]
        return cls(package.rpartition(".")[2], config_class, f"{package}.loop:run", description)

    def load_run(self) -> Callable[[Any], object]:
        """The ``run`` callable, importing it if it was given as a path."""
        return load_target(self.run) if isinstance(self.run, str) else self.run

    def source_file(self) -> Path:
        """The file that defines ``run`` (what ``tune cp <recipe>`` copies)."""
        if isinstance(self.run, str):
            module = self.run.partition(":")[0]
            spec = importlib.util.find_spec(module)
            if spec is None or spec.origin is None:
                raise FileNotFoundError(f"recipe {self.name!r}: module {module!r} not found")
            return Path(spec.origin)
        path = inspect.getsourcefile(self.run)
        if path is None:
            raise FileNotFoundError(f"recipe {self.name!r}: no source file for {self.run!r}")
        return Path(path)
