"""The generation backend of RL recipes, chosen by ``rollout.backend`` (``GENERATION_BACKENDS``).

``builtin`` is tune-train's ``PolicyGenerationBackend`` decoding with ``tune.models.generate``;
``int8`` decodes from a copy of the policy with adapters merged and int8 weights (tune-quant's
``quantize_for_decode``), remade after every update (one process); a package adds another (vLLM on
GPU) through the ``tune.generation_backends`` entry-point group.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from tune.models import generate
from tune.peft import merge_and_unload
from tune.recipes.config.registries import GENERATION_BACKENDS
from tune.train.rl import DecodeCopyBackend, GenerationBackend, PolicyGenerationBackend

__all__ = ["build_generation_backend", "builtin_generation_backend", "int8_generation_backend"]


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


def int8_decode_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for decoding: adapters merged, every Linear int8 (the policy is left
    as it is)."""
    from tune.quant import quantize_for_decode

    decode = copy.deepcopy(model)
    for param in decode.parameters():
        param.grad = None
    merge_and_unload(decode, dequantize=True)  # no adapters: nothing to merge
    decode.requires_grad_(False).eval()
    quantize_for_decode(decode, "int8")
    return decode


def int8_generation_backend(
    model: nn.Module, *, pad_id: int = 0, lockstep: bool = False, batch_size: int | None = None
) -> DecodeCopyBackend:
    """Decoding from an int8 copy of the policy (``int8_decode_copy``), remade after every update:
    about 4x fewer weight bytes read per token than the float policy."""
    if lockstep:
        raise ValueError(
            "rollout.backend=int8 decodes a whole int8 copy of the policy, so it runs with one "
            "process; with several use rollout.backend=builtin"
        )
    return DecodeCopyBackend(model, generate, int8_decode_copy, pad_id=pad_id,
                             batch_size=batch_size)  # fmt: skip


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
