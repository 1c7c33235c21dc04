"""Swappable parts chosen by name from registries that packages extend through entry points.

A registry is an entry-point group (``tune.optimizers``, ``tune.lr_schedules``, ``tune.loggers``;
GRPO adds ``tune.rewards`` and ``tune.generation_backends``). Any installed package adds a name with::

    [project.entry-points."tune.optimizers"]
    lion = "mypkg.optim:Lion"

Names are checked when a config is parsed; targets are imported only when the recipe builds the part.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from tune.recipes.config.errors import ConfigError
from tune.recipes.config.imports import (
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
        builtins: name -> ``module:attr`` target, or None for parts the recipe itself builds
            from the tune libraries (the recipe handles those names directly).
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
        """The object behind ``name``; None for a builtin the recipe builds itself.

        Raises:
            KeyError: unknown name. PermissionError: a dotted path outside ``allow_imports``.
        """
        if name in self.builtins:
            target = self.builtins[name]
            return None if target is None else load_target(target)  # tune's own names
        for ep in entry_points(group=self.group):
            if ep.name == name:
                return ep.load()
        if is_dotted_path(name):
            return import_object(name, allow_imports)
        raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")


OPTIMIZERS = Registry(
    "tune.optimizers",
    "optimizer",
    {
        "adamw": "torch.optim:AdamW",
        "adam": "torch.optim:Adam",
        "sgd": "torch.optim:SGD",
        "adamw8bit": "torchao.optim:AdamW8bit",
    },
)
LR_SCHEDULES = Registry(
    "tune.lr_schedules",
    "lr schedule",
    {
        "constant": "tune.train:constant_schedule_with_warmup",
        "linear": "tune.train:linear_schedule_with_warmup",
        "cosine": "tune.train:cosine_schedule_with_warmup",
        "warmup_stable_decay": "tune.train:warmup_stable_decay_schedule",
    },
)
LOGGERS = Registry(
    "tune.loggers",
    "metric logger",
    {
        "stdout": "tune.train:StdoutLogger",
        "jsonl": "tune.train:JsonlLogger",
        "tensorboard": "tune.train:TensorBoardLogger",
        "wandb": "tune.train:WandbLogger",
        "mlflow": "tune.train:MLflowLogger",
    },
)

_KNOWN = {r.group: r for r in (OPTIMIZERS, LR_SCHEDULES, LOGGERS)}


def registry(group: str) -> Registry:
    """The registry of an entry-point group (an empty one for a group with no builtins)."""
    return _KNOWN.get(group) or Registry(group, group.rpartition(".")[2].rstrip("s"))


def component(group: str) -> dict[str, str]:
    """Field metadata marking a value (a name, or a list of names) as chosen from ``group``.

    Example: ``name: str = field(default="adamw", metadata=component("tune.optimizers"))``.
    """
    return {REGISTRY_METADATA: group}


def check_components(
    config: Any,
    allow_imports: Sequence[str] = (),
    source: str | None = None,
    lines: Mapping[str, int | str] | None = None,
    prefix: str = "",
) -> None:
    """Check every ``component(...)`` field of a config instance against its registry."""
    lines = lines or {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        group = f.metadata.get(REGISTRY_METADATA)
        if group is not None:
            names = value if isinstance(value, list) else [value]
            for i, name in enumerate(names):
                if name is None:
                    continue
                item_key = f"{key}.{i}" if isinstance(value, list) else key
                line = lines.get(item_key) or lines.get(key)
                registry(group).check(name, item_key, allow_imports, source, line)
        elif dataclasses.is_dataclass(value):
            check_components(value, allow_imports, source, lines, key + ".")
