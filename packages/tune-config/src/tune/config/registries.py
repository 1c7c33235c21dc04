"""Swappable parts chosen by name from registries that packages extend through entry points.

A registry is an entry-point group plus the names its owner builds in. Any installed package adds
a name with::

    [project.entry-points."tune.optimizers"]
    lion = "mypkg.optim:Lion"

A schema field marks its value as a registry name with ``component(registry)``; names are checked
when a config is parsed, targets are imported only when the program builds the part::

    OPTIMIZERS = Registry("tune.optimizers", "optimizer", {"adamw": "torch.optim:AdamW"})

    @dataclass
    class Optimizer:
        name: str = field(default="adamw", metadata=component(OPTIMIZERS))

    optimizer_class = OPTIMIZERS.load(config.optimizer.name, allow_imports)
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from tune.config.errors import ConfigError
from tune.config.imports import (
    import_allowed,
    import_object,
    is_dotted_path,
    load_target,
    refusal,
)

REGISTRY_METADATA = "registry"


@dataclass(frozen=True)
class Registry:
    """Named parts of one kind.

    Args:
        group: the entry-point group that extends it.
        kind: what a part is, for messages ("optimizer").
        builtins: name -> ``module:attr`` target, or None for parts the program itself builds
            (it handles those names directly).
    """

    group: str
    kind: str
    builtins: Mapping[str, str | None] = field(default_factory=dict)

    def entry_points(self) -> dict[str, str]:
        """Names registered by installed packages -> ``module:attr``."""
        return {ep.name: ep.value for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every name a config may use, sorted."""
        return sorted({*self.builtins, *self.entry_points()})

    def check(
        self,
        name: str,
        key: str,
        allow_imports: Sequence[str] = (),
        source: str | None = None,
        line: int | str | None = None,
    ) -> None:
        """Raise ConfigError (naming ``key``) unless ``name`` is registered or an allowed import."""
        if name in self.builtins or name in self.entry_points():
            return
        if is_dotted_path(name):
            if not import_allowed(name, allow_imports):
                raise ConfigError(key, refusal(name, allow_imports), source, line)
            try:  # allowed: resolve now, so a re-export or a typo fails before the run starts
                import_object(name, allow_imports)
            except (ImportError, PermissionError) as err:
                raise ConfigError(key, str(err), source, line) from None
            return
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            key,
            f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())} "
            f"(packages add more through the {self.group!r} entry-point group)",
            source,
            line,
        )

    def load(self, name: str, allow_imports: Sequence[str] = ()) -> Any:
        """The object behind ``name``; None for a builtin the program builds itself.

        Raises:
            KeyError: unknown name. PermissionError: a dotted path outside ``allow_imports``.
        """
        if name in self.builtins:
            target = self.builtins[name]
            return None if target is None else load_target(target)  # the owner's own names
        for ep in entry_points(group=self.group):
            if ep.name == name:
                return ep.load()
        if is_dotted_path(name):
            return import_object(name, allow_imports)
        raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")


def component(registry: Registry) -> dict[str, Registry]:
    """Field metadata marking a value (a name, or a list of names) as chosen from ``registry``.

    Example: ``name: str = field(default="adamw", metadata=component(OPTIMIZERS))``.
    """
    return {REGISTRY_METADATA: registry}


def check_components(
    config: Any,
    allow_imports: Sequence[str] = (),
    source: str | None = None,
    lines: Mapping[str, int | str] | None = None,
    prefix: str = "",
) -> None:
    """Check every ``component(...)`` field of a config instance against its registry.

    Raises:
        ConfigError: an unknown name (with did-you-mean) or a refused import, naming the key.
    """
    lines = lines or {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        registry = f.metadata.get(REGISTRY_METADATA)
        if isinstance(registry, Registry):
            names = value if isinstance(value, list) else [value]
            for i, name in enumerate(names):
                if name is None:
                    continue
                item_key = f"{key}.{i}" if isinstance(value, list) else key
                line = lines.get(item_key) or lines.get(key)
                registry.check(name, item_key, allow_imports, source, line)
        elif dataclasses.is_dataclass(value):
            check_components(value, allow_imports, source, lines, key + ".")
