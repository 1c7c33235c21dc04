"""The generation backend of RL recipes, chosen by ``rollout.backend`` (``GENERATION_BACKENDS``).

``builtin`` is tune-train's ``PolicyGenerationBackend`` decoding with ``tune.models.generate``;
a package adds another (vLLM on GPU) through the ``tune.generation_backends`` entry-point group.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from tune.models import generate
from tune.recipes.config.registries import GENERATION_BACKENDS
from tune.train.rl import GenerationBackend, PolicyGenerationBackend

__all__ = ["build_generation_backend", "builtin_generation_backend"]


def builtin_generation_backend(
    model: nn.Module, *, pad_id: int = 0, lockstep: bool = False, batch_size: int | None = None
) -> PolicyGenerationBackend:
    """Batched KV-cache decoding with the live policy (``tune.models.generate``)."""
    # ``generate`` runs under inference mode; a sharded model (lockstep) must decode under plain
    # no_grad, so FSDP2's all-gather buffers stay writable by the next training forward.
    fn = inspect.unwrap(generate) if lockstep else generate
    return PolicyGenerationBackend(
        model, fn, pad_id=pad_id, lockstep=lockstep, batch_size=batch_size
    )


def build_generation_backend(
    name: str,
    model: nn.Module,
    *,
    pad_id: int,
    distributed: bool,
    options: Mapping[str, Any] | None = None,
    allow_imports: Sequence[str] = (),
) -> GenerationBackend:
    """The backend ``name`` called as ``factory(model, pad_id=, lockstep=, **options)``.

    Raises:
        TypeError: the object built does not implement ``GenerationBackend``.
    """
    factory = GENERATION_BACKENDS.load(name, allow_imports)
    backend = factory(model, pad_id=pad_id, lockstep=distributed, **dict(options or {}))
    if not isinstance(backend, GenerationBackend):
        raise TypeError(
            f"rollout.backend {name!r} built {type(backend).__name__}, which lacks "
            "generate(prompts, sampling, seed) and sync_weights(model)"
        )
    return backend
