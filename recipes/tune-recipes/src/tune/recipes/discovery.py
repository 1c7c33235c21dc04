"""Find recipes (``tune.recipes`` entry points) and configs (``configs/<recipe>/*.yaml``).

Nothing is hand-kept: recipes come from the entry-point group, bundled configs from scanning the
package's ``configs/`` data directory (and a third-party recipe's ``config_dir``).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import sys
import typing
from dataclasses import dataclass, is_dataclass
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path

from tune.recipes.recipe import Recipe

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tune.recipes"


@dataclass(frozen=True)
class RecipeEntry:
    """One installed recipe.

    Args:
        name: the name users type (``tune run <name>``).
        target: the entry point's ``module:attr`` string.
        distribution: the installed distribution that provides it.
    """

    name: str
    target: str
    distribution: str


@dataclass(frozen=True)
class BundledConfig:
    """A config shipped with a recipe.

    Args:
        recipe: the recipe it is for (its directory name).
        name: the file name without ``.yaml``.
        path: where it is.
    """

    recipe: str
    name: str
    path: Path

    @property
    def qualified_name(self) -> str:
        """``<recipe>/<name>``, unique across recipes."""
        return f"{self.recipe}/{self.name}"


def installed_recipes() -> list[RecipeEntry]:
    """Every recipe registered in the entry-point group, sorted by name."""
    found: dict[str, RecipeEntry] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        if ep.name in found and found[ep.name].target != ep.value:
            logger.warning(
                "recipe %r is registered twice (%s from %s, %s from %s); keeping the first",
                ep.name,
                found[ep.name].target,
                found[ep.name].distribution,
                ep.value,
                dist,
            )
            continue
        found.setdefault(ep.name, RecipeEntry(ep.name, ep.value, dist))
    return sorted(found.values(), key=lambda r: r.name)


def load_recipe(name: str) -> Recipe:
    """Import the recipe object registered as ``name``.

    Raises:
        LookupError: no such recipe (the message lists the installed ones).
        TypeError: the entry point does not point at a ``Recipe``-like object.
    """
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            obj = ep.load()
            missing = [a for a in ("name", "config_class", "run") if not hasattr(obj, a)]
            if missing:
                raise TypeError(
                    f"entry point {ep.name} = {ep.value} is not a recipe: it lacks {missing}"
                )
            return obj
    names = ", ".join(r.name for r in installed_recipes()) or "none"
    raise LookupError(f"no recipe named {name!r} is installed (installed: {names})")


def is_recipe_file(name: str) -> bool:
    """Whether ``tune run <name>`` names a Python file rather than an installed recipe."""
    return name.endswith(".py")


def load_recipe_file(path: str | Path) -> Recipe:
    """The recipe defined by a Python file, e.g. one that ``tune cp sft dir/`` copied.

    The file either defines a ``recipe`` (a ``Recipe``), or a ``run(config)`` whose first
    parameter is annotated with the config dataclass; the recipe is then named after the
    package of that class (``tune.recipes.sft.config`` -> ``sft``), else after the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file defines neither, or ``run``'s config class is not a dataclass.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} does not exist")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"tune_recipe_file_{digest}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up
    spec.loader.exec_module(module)
    declared = getattr(module, "recipe", None)
    if all(hasattr(declared, a) for a in ("name", "config_class", "run")):
        return typing.cast(Recipe, declared)
    run = getattr(module, "run", None)
    if not callable(run):
        raise ValueError(f"{path} defines neither `recipe` (a Recipe) nor a `run(config)` function")
    hints = typing.get_type_hints(run)
    params = [p for p in hints if p != "return"]
    config_class = hints[params[0]] if params else None
    if not (isinstance(config_class, type) and is_dataclass(config_class)):
        raise ValueError(
            f"{path}: annotate run's first parameter with the config dataclass "
            f"(e.g. `def run(config: SFTConfig)`), or define `recipe = Recipe(...)`"
        )
    package = config_class.__module__.rpartition(".")[0]
    name = package.rpartition(".")[2] if package.startswith("tune.recipes.") else path.stem
    return Recipe(name, config_class, run, description=f"from {path}")


def _scan(directory: Path, recipe: str | None) -> list[BundledConfig]:
    if not directory.is_dir():
        return []
    if recipe is not None:
        return [BundledConfig(recipe, p.stem, p) for p in sorted(directory.glob("*.yaml"))]
    return [c for sub in sorted(directory.iterdir()) for c in _scan(sub, sub.name)]


def bundled_configs(include_installed: bool = True) -> list[BundledConfig]:
    """Configs in this package's ``configs/<recipe>/`` dirs, plus recipes' own ``config_dir``."""
    configs = _scan(Path(str(files("tune.recipes") / "configs")), None)
    if include_installed:
        for entry in installed_recipes():
            try:
                recipe = load_recipe(entry.name)
            except Exception as exc:
                logger.warning("cannot load recipe %r (%s): %s", entry.name, entry.target, exc)
                continue
            extra = getattr(recipe, "config_dir", None)
            if extra is not None:
                configs.extend(_scan(Path(str(extra)), entry.name))
    unique = {c.path.resolve(): c for c in configs}
    return sorted(unique.values(), key=lambda c: (c.recipe, c.name))


def find_config(name: str, recipe: str | None = None) -> tuple[Path, str | None]:
    """A config by file path, ``<recipe>/<name>``, or bare name; returns (path, its recipe).

    Raises:
        FileNotFoundError: nothing matches (the message lists close names).
        LookupError: a bare name shared by configs of several recipes.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path, None
    stem = name.removesuffix(".yaml").removesuffix(".yml")
    configs = bundled_configs(include_installed=True)
    matches = [c for c in configs if stem in (c.qualified_name, c.name)]
    if recipe is not None:
        matches = [c for c in matches if c.recipe == recipe]
    if len(matches) == 1:
        return matches[0].path, matches[0].recipe
    if len(matches) > 1:
        names = ", ".join(c.qualified_name for c in matches)
        raise LookupError(f"config name {name!r} is ambiguous: {names}; use <recipe>/<name>")
    pool = [c.qualified_name for c in configs if recipe in (None, c.recipe)]
    close = difflib.get_close_matches(stem, pool + [c.name for c in configs], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `tune ls` lists them"
    scope = f" for recipe {recipe!r}" if recipe else ""
    raise FileNotFoundError(f"no config file or bundled config named {name!r}{scope}{hint}")
