"""Find recipes through the ``tune.recipes`` entry-point group (no hand-kept registry)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points

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
